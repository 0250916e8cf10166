"""The benchmark scripts run end to end (CPU smoke mode) and write their JSON."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_mfu_benchmark_smoke(tmp_path):
    out = tmp_path / "mfu.json"
    proc = subprocess.run([sys.executable, str(BENCH / "mfu.py"), "--tiny", "--steps", "2", "--warmup", "1",
                           "--variants", "docs-eager-mb2", "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"hf-transformers", "docs-eager-mb2"}
    assert all(r["tokens_per_s"] > 0 and r["steps"] == 2 for r in results.values())
    assert "vs HF" in proc.stdout
