"""benchmarks/lora_speed.py --tiny on CPU: both sides train the same rows and the JSON result is written."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lora_speed.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("lora_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_mode_compares_ours_with_hf_peft(bench, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert bench.main(["--tiny", "--steps", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["activation_checkpointing"] is True and res["rank"] == 16
    ours, hf = res["ours"], res["hf_peft"]
    assert ours["tokens"] == hf["tokens"] > 0  # the same rows on both sides
    assert res["speedup"] == pytest.approx(ours["tokens_per_s"] / hf["tokens_per_s"])
    # the same LoRA on every linear of every block: ours has one adapter on the fused wqkv where HF has three
    layers, rank, hidden, inter, kv_dim = 2, 16, 64, 176, 2 * 16
    shared = rank * (hidden + hidden) + rank * (hidden + inter) * 3  # wo/o_proj, w1-3/gate/up/down
    assert ours["trainable_params"] == layers * (shared + rank * (hidden + hidden + 2 * kv_dim))
    assert hf["trainable_params"] == layers * (shared + rank * (hidden + hidden) + 2 * rank * (hidden + kv_dim))
    assert "speedup" in capsys.readouterr().out


def test_smoke_mode_of_the_qlora_memory_run(bench, tmp_path):
    out = tmp_path / "q.json"
    assert bench.main(["--tiny", "--steps", "2", "--qlora-7b", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["qlora"]["tokens"] > 0 and res["qlora"]["peak_gb"] is None  # no GPU: no peak to report
