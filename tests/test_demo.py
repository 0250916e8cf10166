"""End to end: `make demo`'s script runs the chain (corpus -> evo -> tuner -> deploy) on CPU and reports success."""

import json
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "demo" / "run.py"


def test_demo_runs_and_reports(tmp_path):
    proc = subprocess.run([sys.executable, str(DEMO), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    c = report["corpus"]
    assert c["docs_out"] < c["docs_in"] and c["tokens"] > 10_000  # duplicates and junk removed, shards written
    assert report["pretrain"]["last_loss"] < report["pretrain"]["first_loss"] / 3
    assert report["sft"]["loss"] < 0.1
    assert report["trained_city_accuracy"] >= 0.75
    assert all(r["engine_equals_reference"] for r in report["serve"])
    ok = next(r for r in report["serve"] if r["tool_call_correct"])
    assert ok["tool_calls"][0]["function"]["name"] == "get_weather"
    md = (tmp_path / "report.md").read_text()
    assert "shusheng-corpus" in md and "shusheng-evo" in md and "shusheng-tuner" in md and "shusheng-deploy" in md
    assert (tmp_path / "sft" / "model" / "config.json").is_file()
    assert (tmp_path / "corpus" / "tokens").is_dir() and (tmp_path / "pretrain" / "metrics.jsonl").is_file()
