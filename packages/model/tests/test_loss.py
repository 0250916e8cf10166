import pytest
import torch

from shusheng.model import build_model
from shusheng.model.loss import cross_entropy_reference, linear_cross_entropy


@pytest.mark.parametrize("chunk", [1, 8, 64])
def test_linear_cross_entropy_matches_unfused_in_float64(chunk):
    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 50, (37,))
    y[3], y[10:15] = -100, -100
    fused = linear_cross_entropy(h, w, y, chunk_size=chunk)
    (2.5 * fused).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = cross_entropy_reference(h, w, y)
    (2.5 * ref).backward()
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gh, h.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw, w.grad, rtol=1e-12, atol=1e-12)


def test_model_labels_give_the_summed_loss_of_the_logits():
    model = build_model("tiny", dtype=torch.float64)
    ids = torch.randint(0, model.config.vocab_size, (2, 10))
    labels = ids.roll(-1, 1)
    labels[:, -1] = -100
    logits = model(ids)
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
    torch.testing.assert_close(model(ids, labels=labels), ref, rtol=1e-10, atol=1e-10)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="do not match"):
        linear_cross_entropy(torch.zeros(4, 8), torch.zeros(10, 8), torch.zeros(5, dtype=torch.long))


def test_frozen_weight_gets_no_gradient_and_the_same_hidden_gradient():
    torch.manual_seed(1)
    h = torch.randn(20, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(30, 8, dtype=torch.float64)  # frozen
    y = torch.randint(0, 30, (20,))
    linear_cross_entropy(h, w, y, chunk_size=7).backward()
    got = h.grad.clone()
    h.grad = None
    cross_entropy_reference(h, w, y).backward()
    torch.testing.assert_close(got, h.grad, rtol=1e-12, atol=1e-12)
    assert w.grad is None
