"""Parallelize plans: TP and FSDP2 on 2 CPU processes (gloo) match one process; AC and compile keep results."""

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from shusheng.model import ModelConfig, build_model, load_pretrained, save_pretrained
from shusheng.model.parallel import apply_ac, apply_compile, apply_fsdp, apply_tp, exit_rank, shard_tp_local

CFG = ModelConfig.from_name("tiny", num_heads=4, num_kv_heads=2, qkv_bias=True, o_bias=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(worker: str, world: int, out) -> None:
    """Run `worker` on `world` processes. Through a fresh interpreter running this file as a script, so the spawned
    children can import the worker whatever way pytest imported this module."""
    proc = subprocess.run([sys.executable, __file__, worker, str(world), str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _init(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (world,))


def _tp_worker(rank, world, port, out):
    mesh = _init(rank, world, port)
    model = build_model(CFG, seed=11).eval()
    ids = torch.randint(0, CFG.vocab_size, (2, 9))
    with torch.no_grad():
        ref = model(ids)
    apply_tp(model, mesh)
    wqkv = model.layers[0].attention.wqkv.weight
    assert wqkv.to_local().shape[0] == wqkv.shape[0] // world
    with torch.no_grad():
        got = model(ids)
    if rank == 0:
        torch.save({"ref": ref, "got": got.full_tensor() if hasattr(got, "full_tensor") else got}, out)
    dist.barrier()  # nobody tears gloo down while another rank still uses it
    dist.destroy_process_group()
    exit_rank(0)


def _tp_local_worker(rank, world, port, out):
    """shard_tp_local + an all-reduce after wo and w2 + a gather of the logits = the unsharded model."""
    _init(rank, world, port)
    results = {}
    for name, cfg in [("bias", CFG), ("tied", ModelConfig.from_name("tiny", num_kv_heads=2, tie_word_embeddings=True))]:
        model = build_model(cfg, seed=14).eval()
        ids = torch.randint(0, cfg.vocab_size, (2, 9))
        with torch.no_grad():
            ref = model(ids)
        shard_tp_local(model, rank, world)
        attn = model.layers[0].attention
        assert attn.wqkv.weight.shape[0] == (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim // world
        assert (attn.wo.bias is not None) == (cfg.o_bias and rank == 0)
        assert model.tok_embeddings.weight.shape[0] == cfg.vocab_size  # replicated
        for block in model.layers:
            for linear in (block.attention.wo, block.feed_forward.w2):
                linear.register_forward_hook(lambda m, i, o: dist.all_reduce(o))

        def gather(m, i, o):
            parts = [torch.empty_like(o) for _ in range(world)]
            dist.all_gather(parts, o.contiguous())
            return torch.cat(parts, -1)

        model.output.register_forward_hook(gather)
        with torch.no_grad():
            results[name] = (ref, model(ids))
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()
    exit_rank(0)


def _loss(model, ids):
    logits = model(ids[:, :-1]).float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _fsdp_worker(rank, world, port, out):
    mesh = _init(rank, world, port)
    ids = torch.randint(0, CFG.vocab_size, (2 * world, 10))
    ref_model = build_model(CFG, seed=12)
    _loss(ref_model, ids).backward()
    model = build_model(CFG, seed=12)
    apply_ac(model)
    apply_fsdp(model, mesh, param_dtype=None, reduce_dtype=None)
    loss = _loss(model, ids[rank * 2 : rank * 2 + 2])
    loss.backward()
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    if rank == 0:
        ref = {n: p.grad for n, p in ref_model.named_parameters()}
        torch.save({"ref": ref, "got": grads}, out)
    dist.barrier()  # nobody tears gloo down while another rank still uses it
    dist.destroy_process_group()
    exit_rank(0)


def test_tensor_parallel_matches_single_process(tmp_path):
    _run("_tp_worker", 2, tmp_path / "tp.pt")
    r = torch.load(tmp_path / "tp.pt")
    torch.testing.assert_close(r["got"], r["ref"], atol=1e-5, rtol=1e-5)


def test_shard_tp_local_with_manual_collectives_matches_single_process(tmp_path):
    _run("_tp_local_worker", 2, tmp_path / "tp_local.pt")
    for name, (ref, got) in torch.load(tmp_path / "tp_local.pt").items():
        assert got.shape == ref.shape, name
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5, msg=name)


def test_shard_tp_local_rejects_indivisible_and_bad_rank():
    with pytest.raises(ValueError, match="tensor parallel degree 4 must divide num_kv_heads"):
        shard_tp_local(build_model(CFG), 0, 4)
    with pytest.raises(ValueError, match=r"tensor parallel degree 2 must divide intermediate_size \(171\)"):
        shard_tp_local(build_model(ModelConfig.from_name("tiny", intermediate_size=171)), 0, 2)
    with pytest.raises(ValueError, match=r"tensor parallel degree 2 must divide vocab_size \(511\)"):
        shard_tp_local(build_model(ModelConfig.from_name("tiny", vocab_size=511)), 0, 2)
    with pytest.raises(ValueError, match="rank 2 is outside the tensor parallel group of size 2"):
        shard_tp_local(build_model(CFG), 2, 2)


def test_fsdp2_with_ac_gradients_match_single_process(tmp_path):
    _run("_fsdp_worker", 2, tmp_path / "fsdp.pt")
    r = torch.load(tmp_path / "fsdp.pt")
    names = {n.replace("_checkpoint_wrapped_module.", "") for n in r["got"]}
    assert names == set(r["ref"])
    for n, g in r["got"].items():
        torch.testing.assert_close(g, r["ref"][n.replace("_checkpoint_wrapped_module.", "")], atol=1e-5, rtol=1e-4)


def test_ac_and_compile_keep_outputs_and_names(tmp_path):
    ids = torch.randint(0, CFG.vocab_size, (2, 8))
    ref = build_model(CFG, seed=13)
    _loss(ref, ids).backward()
    model = build_model(CFG, seed=13)
    apply_ac(model, every=2)
    apply_compile(model, backend="aot_eager")
    loss = _loss(model, ids)
    loss.backward()
    torch.testing.assert_close(loss, _loss(ref, ids))
    ref_grads = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n.replace("_checkpoint_wrapped_module.", "")].grad)
    save_pretrained(model, tmp_path / "ck", format="internlm2")  # wrapper names are stripped on save
    back = load_pretrained(tmp_path / "ck")
    assert torch.equal(back.layers[1].attention.wqkv.weight, model.layers[1].attention.wqkv.weight)


def test_tp_rejects_indivisible():
    class FakeMesh:
        def size(self):
            return 3

    with pytest.raises(ValueError, match="tensor parallel degree 3 must divide num_kv_heads"):
        apply_tp(build_model(CFG), FakeMesh())


if __name__ == "__main__":
    name, world, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    mp.spawn(globals()[name], args=(world, _free_port(), out), nprocs=world, join=True)
