"""benchmarks/host_overhead.py on CPU: the step's host time splits into parts that add up; pipe_outputs.py runs."""

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "host_overhead.py"


def test_small_batch_parts_add_up():
    cmd = [sys.executable, str(SCRIPT), "--batch", "8", "--steps", "5", "--warmup", "2", "--repeats", "2",
           "--prompt-len", "20", "--profile"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (res["batch"], res["steps"], len(res["host_python_all_repeats"])) == (8, 5, 2)
    t = res["us_per_seq_step"]
    assert all(v > 0 for v in t.values()), t
    assert math.isclose(t["step"], t["run_and_sampler"] + t["bookkeeping"], rel_tol=1e-3)
    assert math.isclose(t["host_python"], t["bookkeeping"] + t["input_prep"], rel_tol=1e-3)
    assert t["schedule"] + t["complete"] < t["bookkeeping"] and t["forward"] < t["run_and_sampler"]
    assert "llm_engine.py" in proc.stderr and "(_complete)" in proc.stderr  # the profile of the engine's functions


PIPE_SCRIPT = SCRIPT.with_name("pipe_outputs.py")


def test_pipe_outputs_times_both_sides_and_refuses_bad_arguments():
    cmd = [sys.executable, str(PIPE_SCRIPT), "--batch", "8", "--steps", "5", "--repeats", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (res["batch"], res["steps"], len(res["all"])) == (8, 5, 2)
    assert res["engine_side_us"] > 0 and res["api_side_us"] > 0 and 20 < res["bytes"] < 1000
    bad = subprocess.run([sys.executable, str(PIPE_SCRIPT), "--steps", "0"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "at least 1" in bad.stderr
