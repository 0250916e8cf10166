"""benchmarks/ttft_breakdown.py --tiny on CPU: every stage of every request is stamped, in order, in every process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ttft_breakdown.py"


def test_tiny_stamps_every_stage_in_order(tmp_path):
    out = tmp_path / "tb.json"
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--requests", "4", "--warmup", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "TTFT (client)" in proc.stdout and "engine: in -> first token" in proc.stdout
    res = json.loads(out.read_text())
    assert len(res["online"]) == len(res["offline"]) == 4
    for t in res["online"]:
        # the API process's stages, then the engine process's, then back: one clock across the processes
        for a, b in [("client_send", "asgi"), ("asgi", "body"), ("body", "handler"), ("handler", "prepared"),
                     ("prepared", "sent"), ("prepared", "engine_in"), ("engine_in", "first_token"),
                     ("first_token", "output"), ("output", "reader"), ("reader", "loop"), ("loop", "sse"),
                     ("sse", "written"), ("written", "client_first")]:
            assert t[a] <= t[b], (a, b, t)
        assert t["tokens"] == 16 and t["client_end"] > t["client_first"]
    for t in res["offline"]:
        assert t["client_send"] <= t["engine_in"] <= t["first_token"] <= t["client_first"] < t["client_end"]
    # the server's processes froze their start-up heaps: a full collection no longer walks torch's objects
    full = res["full_gc_ms"]
    assert full["api"] < full["client"] / 5 and full["engine"] < full["client"] / 5
    assert res["steps"] and res["offline_steps"]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="pinning needs Linux and two or more CPUs")
def test_pin_runs_the_server_with_engine_cpus(tmp_path):
    out = tmp_path / "tb.json"
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--pin", "--no-offline", "--requests", "2", "--warmup", "1",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "engine process, pinned" in proc.stdout
    assert all("client_first" in t and "sse" in t for t in json.loads(out.read_text())["online"])
