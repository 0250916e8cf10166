"""benchmarks/serve_overhead.py --tiny on CPU: the offline engine and the real server run the same requests."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_overhead.py"


def test_tiny_offline_and_online_see_the_same_load(tmp_path):
    out = tmp_path / "so.json"
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--rates", "20,inf", "--num-prompts", "6", "--max-duration", "0",
           "--input-len", "8:12", "--output-len", "4:9", "--warmup", "2", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "TTFT mean ms off/on" in proc.stdout
    res = json.loads(out.read_text())
    assert res["all_completed"] and res["endpoint"] == "/v1/completions" and res["device"] == "cpu"
    assert [r["rate"] for r in res["rates"]] == [20.0, "inf"]
    assert len({r["seed"] for r in res["rates"]}) == 2  # each rate its own prompts (no cross-rate prefix hits)
    for r in res["rates"]:
        off, on = r["offline"], r["online"]
        assert r["num_prompts"] == 6 and r["completed_and_same_load"] and r["same_load"]["mismatched"] == 0
        assert off["completed"] == on["completed"] == 6 and off["failed"] == on["failed"] == 0
        assert off["total_output_tokens"] == on["total_output_tokens"] == sum(q["max_tokens"] for q in off["requests"])
        assert off["total_input_tokens"] == on["total_input_tokens"]
        max_tokens = [q["max_tokens"] for q in off["requests"]]
        assert max_tokens == [q["max_tokens"] for q in on["requests"]] and len(set(max_tokens)) > 1
        for a, b in zip(off["requests"], on["requests"], strict=True):
            assert a["output_tokens"] == b["output_tokens"] == a["max_tokens"]
            assert a["prompt_tokens"] == b["prompt_tokens"]
            assert 9 <= a["prompt_tokens"] <= 13  # BOS + one token per prompt word: the words are in the vocabulary
            assert 0 < a["ttft_ms"] <= a["e2e_ms"] and 0 < b["ttft_ms"] <= b["e2e_ms"]
        for side in (off, on):
            assert side["output_token_throughput"] == side["total_output_tokens"] / side["duration_s"]
        if r["rate"] == 20.0:  # the Poisson schedule was followed on both sides: the last arrival is well after 0
            assert off["duration_s"] > 0.05 and on["duration_s"] > 0.05
        for v in r["ratios"].values():
            assert v is not None and v > 0 and math.isfinite(v)


def test_engine_cpus_pin_both_sides_or_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--engine-cpus", "100000"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--engine-cpus: engine CPUs [100000] are not among" in proc.stderr
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        pytest.skip("pinning needs Linux and two or more CPUs")
    out = tmp_path / "so.json"
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--rates", "inf", "--num-prompts", "3", "--warmup", "1",
           "--input-len", "8", "--output-len", "4", "--engine-cpus", str(cpus[-1]), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["engine_cpus"] == [cpus[-1]] and res["all_completed"]
