"""Acceptance 5: packed documents (varlen) equal each document run alone; padding masks; GPU implementations."""

import pytest
import torch

from shusheng.model import SDPAAttention, build_model, cu_seqlens_from_lengths, varlen_attention
from shusheng.model.attention import VARLEN_IMPLS, available_varlen_impls

LENGTHS = [5, 17, 1, 9]


def test_varlen_packed_equals_each_document_alone():
    model = build_model("tiny", seed=1).eval()
    docs = [torch.randint(0, 512, (n,)) for n in LENGTHS]
    packed = torch.cat(docs)[None]  # (1, 32)
    attn = varlen_attention(cu_seqlens_from_lengths(LENGTHS))
    assert attn.name == "sdpa_loop"  # the CPU path
    assert attn.positions(1, 32, "cpu")[0, :8].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    with torch.no_grad():
        out = model(packed, attention=attn)[0]
        alone = torch.cat([model(d[None])[0] for d in docs])
        dense = model(packed)[0]
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-5)
    assert (dense[5:] - alone[5:]).abs().max() > 1e-2  # without the mask, documents do leak into each other


def test_varlen_over_several_rows():
    model = build_model("tiny", seed=2).eval()
    lengths = [3, 5, 4, 4]  # two rows of 8, one document crossing nothing
    ids = torch.randint(0, 512, (2, 8))
    attn = varlen_attention(cu_seqlens_from_lengths(lengths))
    with torch.no_grad():
        out = model(ids, attention=attn).reshape(16, -1)
        flat = ids.reshape(-1)
        alone = torch.cat([model(d[None])[0] for d in flat.split(lengths)])
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-5)


def test_varlen_rejects_bad_metadata():
    with pytest.raises(ValueError, match="strictly increasing"):
        varlen_attention(torch.tensor([0, 3, 3, 5]))
    with pytest.raises(ValueError, match="cu_seqlens covers 5 tokens but the batch has 6"):
        build_model("tiny")(torch.zeros(1, 6, dtype=torch.long), attention=varlen_attention(torch.tensor([0, 5])))
    with pytest.raises(ValueError, match="unknown varlen attention impl"):
        varlen_attention(torch.tensor([0, 5]), impl="nope")


def test_padding_mask_matches_unpadded():
    model = build_model("tiny", seed=4).eval()
    a, b = torch.randint(0, 512, (7,)), torch.randint(0, 512, (4,))
    ids = torch.stack([a, torch.cat([torch.zeros(3, dtype=torch.long), b])])  # left-pad b
    mask = ids != -1
    mask[1, :3] = False
    with torch.no_grad():
        out = model(ids, attention=SDPAAttention(mask))
        torch.testing.assert_close(out[0], model(a[None])[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[1, 3:], model(b[None])[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()


@pytest.mark.gpu
@pytest.mark.parametrize("impl", [i for i in VARLEN_IMPLS if i != "sdpa_loop"])
def test_gpu_varlen_impls_match_loop(impl):
    if impl not in available_varlen_impls("cuda"):
        pytest.skip(f"{impl} is not available here")
    torch.manual_seed(0)
    lengths = [100, 37, 300, 1, 74]
    cu = cu_seqlens_from_lengths(lengths, "cuda")
    N, H, KV, D = sum(lengths), 8, 2, 64
    q = torch.randn(1, N, H, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, N, KV, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ref = varlen_attention(cu, impl="sdpa_loop")(q.float(), k.float(), v.float(), 0)
    out = varlen_attention(cu, impl=impl)(q, k, v, 0).float()
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < 1e-2, rel
