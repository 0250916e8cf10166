"""End to end: `make demo`'s script runs the chain on CPU and leaves a report that says it worked."""

import json
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "demo" / "run.py"


def test_demo_runs_and_reports(tmp_path):
    proc = subprocess.run([sys.executable, str(DEMO), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["checkpoint"]["reload_bit_exact"] is True
    assert report["checkpoint"]["llama_format_max_abs_diff"] == 0.0
    assert report["generate"]["tool_call_recovered"] is True
    assert report["finetune"]["last_loss"] < report["finetune"]["first_loss"] / 10
    md = (tmp_path / "report.md").read_text()
    assert "tool call recovered by the parser | **True**" in md
    assert sorted(p.name for p in (tmp_path / "checkpoint-internlm2").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
