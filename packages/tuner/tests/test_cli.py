"""The CLI: the tiny example config trains, merges and chats end to end; bad input is one line and exit code 2."""

import io
import subprocess
import sys
from pathlib import Path

import pytest

from shusheng.tuner.cli import main
from shusheng.tuner.config import load

TUNER = Path(__file__).resolve().parents[1]
CONFIGS = sorted((TUNER / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_example_configs_are_valid(config):
    cfg = load(config)
    assert cfg.out.startswith("runs/")


def test_train_merge_chat_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(TUNER)  # the example configs' paths are relative to the package folder
    out = tmp_path / "run"
    assert main(["train", "configs/sft_lora_tiny.yaml", f"out={out}", "train.log_every=1000"]) == 0
    assert (out / "base" / "model.safetensors").is_file()  # a preset's random base is kept beside the adapter
    assert main(["merge", str(out / "adapter"), str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO("Color 3?\n/reset\nWhich color is 6?\n/exit\n"))
    assert main(["chat", str(tmp_path / "merged"), "--max-new-tokens", "8", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["assistant> pink", "(conversation reset)", "assistant> teal"]
    # the same through --adapter on the base instead of the merged folder
    monkeypatch.setattr(sys, "stdin", io.StringIO("Color 3?\n"))
    assert main(["chat", str(out / "base"), "--adapter", str(out / "adapter"), "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.splitlines() == ["assistant> pink"]


def test_check_data_marks_trained_tokens(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "Color 3?", "output": "pink"}\n')
    assert main(["check-data", str(data), "--tokenizer", str(TUNER / "configs" / "tiny")]) == 0
    out = capsys.readouterr().out
    assert "1 alpaca records, template internlm2" in out
    assert "<|im_start|>user\nColor 3?<|im_end|>\n<|im_start|>assistant\n[[pink<|im_end|>]]\n" in out
    assert "5 trained" in out and "packing at max_length=2048: 1 in, 1 packed" in out


def test_list_templates(capsys):
    assert main(["list-templates"]) == 0
    names = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert {"internlm2", "llama3", "chatml"} <= set(names)


@pytest.mark.parametrize("args,message", [
    (["train", "CONFIG", "optim.lrr=1"], "error: unknown config key 'optim.lrr'; valid keys here: name, lr"),
    (["train", "CONFIG", "data.train=[missing.jsonl]"], "error: data file missing.jsonl does not exist"),
    (["train", "CONFIG", "method=dora"], "error: method must be one of ['full', 'lora', 'qlora'], got 'dora'"),
    (["train", "nope.yaml"], "error: config file nope.yaml does not exist"),
    (["train", "CONFIG", "train.compile=true"], "error: train: train.compile is not supported yet"),
    (["check-data", "configs/sft_lora_tiny.yaml", "--tokenizer", "configs/tiny"], "error: data file "
     "configs/sft_lora_tiny.yaml: unknown suffix '.yaml'"),
    (["merge", "configs", "out"], "error: configs is not an adapter folder (no adapter_config.json)"),
    (["score", "configs/tiny", "--data", "x.jsonl"], "error: configs/tiny is not a reward model"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message, monkeypatch, capsys):
    monkeypatch.chdir(TUNER)
    args = [a.replace("CONFIG", "configs/sft_lora_tiny.yaml") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


def test_the_installed_entry_point_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "shusheng.tuner.cli", "train", str(TUNER / "configs" /
                                                                                    "sft_lora_tiny.yaml"),
                           "lora.rank=0"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: lora: lora.rank must be >= 1, got 0"
