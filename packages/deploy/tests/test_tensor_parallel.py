"""Tensor parallelism: a 2-rank engine (CPU, gloo) gives what one process gives; bad degrees fail clearly.

The GPU section (2+ CUDA cards) checks TP=2 against TP=1 with NCCL, Triton kernels and CUDA graphs.
"""

import gc
import json
import os
import signal
import subprocess
import sys
import threading

import httpx
import pytest
import torch
import torch.distributed as dist

from shusheng.deploy import EngineConfig, LLMEngine, SamplingParams, TPEngine, pipeline
from shusheng.deploy.bench import save_random_checkpoint, synthetic_tokenizer_file
from shusheng.deploy.cli import main as cli_main
from shusheng.model import ModelConfig, build_model, load_tokenizer


def tiny_tp_checkpoint(folder):
    """A tiny InternLM2 checkpoint with qkv and o biases (the sharded bias paths), weights scaled up so greedy
    argmax has clear margins, and a word-level tokenizer of 300 ids ("t3" .. "t299")."""
    tok = load_tokenizer(synthetic_tokenizer_file(folder / "tok", 300))
    cfg = ModelConfig.from_name("tiny", vocab_size=300, num_heads=4, num_kv_heads=2, qkv_bias=True, o_bias=True,
                                bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id,
                                max_position_embeddings=512)
    return save_random_checkpoint(folder / "ckpt", cfg, tok, std=0.3)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_tp_checkpoint(tmp_path_factory.mktemp("tp"))


OPTS = dict(device="cpu", max_num_batched_tokens=32, max_num_seqs=8)  # chunked prefills mixed with decodes


@pytest.fixture
def tp_engine(ckpt):
    """A 2-rank engine on the CPU (one torch.distributed group per process: one engine at a time)."""
    eng = TPEngine(EngineConfig(model=str(ckpt), tensor_parallel_size=2, **OPTS))
    yield eng
    eng.shutdown()


def prompts_of(lengths, seed=0, vocab=300):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def scenario(eng) -> dict:
    """Requests of mixed lengths, more added while others decode, an abort, n=2 seeded sampling, unseeded sampling
    and logprobs; returns every request's final token ids and log-probabilities."""
    # the two engines live in this one process and share the CPU's global RNG (unseeded requests draw from it):
    # both start from the engine seed. Only rank 0's draws count: it broadcasts its tokens to the worker.
    torch.manual_seed(eng.config.seed)
    prompts = prompts_of([1, 5, 16, 17, 40, 3, 23, 30, 9], seed=1)
    seeded = SamplingParams(n=2, max_tokens=10, temperature=0.9, top_p=0.95, seed=7, ignore_eos=True)
    unseeded = SamplingParams(max_tokens=10, temperature=1.0, ignore_eos=True)
    logprobs = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=2, prompt_logprobs=1)
    ids = [eng.add_request(p, GREEDY) for p in prompts[:4]]
    final, aborted, victim = {}, None, None
    for step in range(300):
        if step == 2:
            ids += [eng.add_request(prompts[4], seeded), eng.add_request(prompts[5], GREEDY)]
        if step == 3:
            ids += [eng.add_request(prompts[6], unseeded), eng.add_request(prompts[7], logprobs)]
            victim = eng.add_request(prompts[8], GREEDY)
        for out in eng.step():
            if out.finished:
                final[out.request_id] = out
            elif out.request_id == victim and aborted is None and len(out.outputs[0].token_ids) >= 3:
                aborted = eng.abort(victim)  # mid-decode
        if step > 3 and not eng.has_unfinished():
            break
    assert aborted is not None and aborted.outputs[0].finish_reason == "abort"
    assert 0 < len(aborted.outputs[0].token_ids) < GREEDY.max_tokens
    assert set(final) == set(ids)
    bm = eng.block_manager
    assert bm.num_free_blocks == bm.num_blocks  # nothing leaked
    result = {rid: [(c.token_ids, c.logprobs) for c in out.outputs] for rid, out in final.items()}
    result["aborted"] = aborted.outputs[0].token_ids
    result["prompt_logprobs"] = final[ids[-1]].prompt_logprobs
    return result


def assert_same(got, ref):
    """Token ids equal; log-probabilities equal up to float rounding (TP sums partial products in another order)."""
    if isinstance(ref, float):
        assert got == pytest.approx(ref, abs=1e-4)
    elif isinstance(ref, dict):
        assert got.keys() == ref.keys()
        for k in ref:
            assert_same(got[k], ref[k])
    elif isinstance(ref, list | tuple):
        assert len(got) == len(ref)
        for a, b in zip(got, ref, strict=True):
            assert_same(a, b)
    else:
        assert got == ref


def test_tp_engine_equals_single_process(ckpt, tp_engine):
    ref = scenario(LLMEngine(EngineConfig(model=str(ckpt), **OPTS)))
    got = scenario(tp_engine)
    assert_same(got, ref)
    assert len(ref["4"]) == 2 and ref["4"][0][0] != ref["4"][1][0]  # n=2 drew two different samples
    assert tp_engine.runner.model.output.weight.shape[0] == 150  # really sharded: half the vocabulary
    assert tp_engine.runner.k_caches[0].shape[2] == 1  # one of the two KV heads


def test_tp_engine_generate_and_embed(ckpt, tp_engine):
    single = LLMEngine(EngineConfig(model=str(ckpt), **OPTS))
    prompts = prompts_of([7, 33, 2, 18], seed=2)
    got = tp_engine.generate(prompts, GREEDY)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in single.generate(prompts, GREEDY)]
    torch.testing.assert_close(tp_engine.embed(prompts), single.embed(prompts), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="input 0 is empty"):  # every rank refuses it alike, and goes on
        tp_engine.embed([[]])
    assert [o.outputs[0].token_ids for o in tp_engine.generate(prompts[:1], GREEDY)] == \
        [got[0].outputs[0].token_ids]


def test_pipeline_with_tp_and_clean_shutdown(ckpt):
    ref = pipeline(str(ckpt), device="cpu")("t7 t8 t9 t10", GREEDY).outputs[0].text
    pipe = pipeline(str(ckpt), device="cpu", tensor_parallel_size=2)
    assert isinstance(pipe.engine, TPEngine)
    assert pipe("t7 t8 t9 t10", GREEDY).outputs[0].text == ref
    workers = [w.proc for w in pipe.engine._workers]
    pipe.shutdown()
    assert [p.exitcode for p in workers] == [0]
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="shut down"):
        pipe.engine.step()


def test_dead_worker_is_reported(ckpt):
    eng = TPEngine(EngineConfig(model=str(ckpt), tensor_parallel_size=2, **OPTS))
    try:
        eng.add_request(prompts_of([5])[0], GREEDY)
        eng.step()
        worker = eng._workers[0].proc
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
        with pytest.raises(RuntimeError, match=r"tensor-parallel rank 1 exited \(exit code -9\)"):
            eng.step()
        with pytest.raises(RuntimeError, match="rank 1 exited"):  # stays failed
            eng.step()
    finally:
        eng.shutdown()
    assert not dist.is_initialized()


def test_worker_dying_at_spawn_is_reported_not_waited_for(ckpt, tmp_path):
    """A script without a `__main__` guard: each spawned worker re-runs it and dies before reaching the store.
    Rank 0 says so (with the fix) instead of waiting in the collective init for the store's timeout (30 min)."""
    script = tmp_path / "no_guard.py"
    script.write_text("from shusheng.deploy import EngineConfig, TPEngine\n"
                      f"TPEngine(EngineConfig(model={str(ckpt)!r}, tensor_parallel_size=2, device='cpu'))\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "rank 1 exited during start-up" in last and 'if __name__ == "__main__":' in last, proc.stderr[-2000:]


def test_bad_degrees_rejected_before_any_process_starts(ckpt):
    with pytest.raises(ValueError, match=r"tensor parallel degree 4 must divide num_kv_heads \(2\)"):
        TPEngine(EngineConfig(model=str(ckpt), device="cpu", tensor_parallel_size=4))
    with pytest.raises(ValueError, match="tensor_parallel_size must be >= 1, got 0"):
        EngineConfig(model=str(ckpt), tensor_parallel_size=0)
    with pytest.raises(ValueError, match="'cuda:1' names one card"):
        EngineConfig(model=str(ckpt), device="cuda:1", tensor_parallel_size=2)
    with pytest.raises(ValueError, match="needs one process per rank"):  # a plain LLMEngine cannot shard
        LLMEngine(EngineConfig(model=str(ckpt), device="cpu", tensor_parallel_size=2))
    with pytest.raises(ValueError, match="TPEngine needs tensor_parallel_size >= 2"):
        TPEngine(EngineConfig(model=str(ckpt), device="cpu"))
    with pytest.raises(ValueError, match="an in-memory model cannot be sharded"):
        TPEngine(EngineConfig(model=str(ckpt), device="cpu", tensor_parallel_size=2), model=build_model("tiny"))
    assert not dist.is_initialized()
    import multiprocessing

    assert not multiprocessing.active_children()


def test_cli_rejects_bad_tp_in_one_line(ckpt, capsys):
    assert cli_main(["generate", str(ckpt), "--prompt", "x", "--device", "cpu", "--tp", "4"]) == 2
    assert capsys.readouterr().err == (
        "shusheng-deploy: error: tensor parallel degree 4 must divide num_kv_heads (2)\n")
    if not torch.cuda.is_available():
        assert cli_main(["generate", str(ckpt), "--prompt", "x", "--device", "cuda", "--tp", "2"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_cli_generate_with_tp(ckpt):
    single = pipeline(str(ckpt), device="cpu")
    want = [single(p, SamplingParams(max_tokens=8, temperature=0.0)).outputs[0].text for p in ("t5 t6 t7", "t42")]
    cmd = [sys.executable, "-m", "shusheng.deploy.cli", "generate", str(ckpt), "--prompt", "t5 t6 t7", "--prompt",
           "t42", "--max-tokens", "8", "--device", "cpu", "--tp", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "".join(t + "\n" for t in want)


def test_server_with_tp(ckpt, cli_server):
    single = pipeline(str(ckpt), device="cpu")
    want = single("t5 t6 t7", SamplingParams(max_tokens=8, temperature=0.0)).outputs[0].text
    with cli_server(ckpt, "--tp", "2") as url:
        r = httpx.post(url + "/v1/completions", json={"model": "ckpt", "prompt": "t5 t6 t7", "max_tokens": 8,
                                                      "temperature": 0.0}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == want


def test_server_rejects_bad_tp_in_one_line(ckpt):
    cmd = [sys.executable, "-m", "shusheng.deploy.cli", "serve", str(ckpt), "--device", "cpu", "--tp", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "shusheng-deploy: error: tensor parallel degree 3 must divide num_kv_heads (2)\n"


# ---- on 2+ GPUs: NCCL, Triton kernels, CUDA graphs ----

two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    """A small random-weight model (8 query heads, 4 KV heads, 4 layers) with a word-level tokenizer."""
    folder = tmp_path_factory.mktemp("tp-gpu")
    tok = load_tokenizer(synthetic_tokenizer_file(folder / "tok", 512))
    cfg = ModelConfig.from_name("tiny", vocab_size=512, hidden_size=256, intermediate_size=512, num_layers=4,
                                num_heads=8, num_kv_heads=4, max_position_embeddings=1024, torch_dtype="float32")
    return save_random_checkpoint(folder / "ckpt", cfg, tok, std=0.15, fmt="llama")


@pytest.mark.gpu
@two_gpus
def test_gpu_tp2_greedy_equals_tp1(small_ckpt):
    opts = dict(device="cuda", dtype="float32", max_num_seqs=16, gpu_memory_utilization=0.3)
    prompts = prompts_of([1, 7, 16, 17, 40, 63, 100, 5], seed=3, vocab=512)
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    seeded = SamplingParams(n=2, max_tokens=16, temperature=0.8, seed=5, ignore_eos=True)

    def run(eng):
        return ([o.outputs[0].token_ids for o in eng.generate(prompts, params)],
                [[c.token_ids for c in o.outputs] for o in eng.generate(prompts[:3], seeded)])

    single = LLMEngine(EngineConfig(model=str(small_ckpt), **opts))
    ref = run(single)
    del single
    gc.collect()
    torch.cuda.empty_cache()
    eng = TPEngine(EngineConfig(model=str(small_ckpt), tensor_parallel_size=2, **opts))
    try:
        assert eng.runner.graphs  # decode steps captured with NCCL all-reduces inside
        assert eng.runner.prefill_graphs is not None  # and prefill steps, cut at the attention calls
        got = run(eng)
        assert eng.runner.graph_replays > 0 and eng.runner.prefill_graphs.replays > 0
        assert got[0] == ref[0]  # greedy
        assert got[1] == ref[1]  # seeded sampling, n=2: the requests' own generators on cuda:0
    finally:
        # NCCL's teardown waits for every CUDA graph that captured its collectives (the ranks free theirs first):
        # a shutdown that hangs fails here instead of holding the GPU machine
        stopper = threading.Thread(target=eng.shutdown, daemon=True)
        stopper.start()
        stopper.join(120)
        assert not stopper.is_alive(), "TPEngine.shutdown() hung"
    assert not eng.runner.graphs and eng.runner.prefill_graphs is None and not dist.is_initialized()


@pytest.mark.gpu
@two_gpus
def test_gpu_cli_generate_with_tp(small_ckpt):
    out = subprocess.run([sys.executable, "-m", "shusheng.deploy.cli", "generate", str(small_ckpt), "--prompt",
                          "t5 t6 t7", "--max-tokens", "8", "--tp", "2", "--dtype", "float32",
                          "--gpu-memory-utilization", "0.4"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    single = pipeline(str(small_ckpt), device="cuda", dtype="float32", gpu_memory_utilization=0.3)
    want = single("t5 t6 t7", SamplingParams(max_tokens=8, temperature=0.0)).outputs[0].text
    assert out.stdout == want + "\n", json.dumps([out.stdout, want])
