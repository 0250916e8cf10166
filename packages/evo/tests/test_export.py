"""Export a trained checkpoint to a Hugging Face folder: transformers loads it with the same logits."""

import pytest
import torch

from shusheng.evo import export, load_trained
from shusheng.evo.cli import main
from shusheng.model import load_pretrained


@pytest.fixture(scope="module")
def run(write_config, corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    cfg = write_config(tmp / "c.yaml", corpus, steps=4, output=str(tmp / "run"))
    assert main(["train", str(cfg)]) == 0
    return tmp / "run"


def test_export_llama_loads_in_transformers_with_the_same_logits(run, tmp_path):
    transformers = pytest.importorskip("transformers")
    model, _ = load_trained(run)
    out = export(run, tmp_path / "hf", format="llama", dtype="float32")
    hf = transformers.LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    ids = torch.randint(3, 60, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), rtol=1e-4, atol=1e-4)


def test_export_internlm2_round_trips_through_shusheng_model(run, tmp_path, capsys):
    assert main(["export", str(run / "checkpoints"), "--output", str(tmp_path / "il2"), "--format", "internlm2",
                 "--dtype", "float32"]) == 0
    assert "exported" in capsys.readouterr().out
    model, _ = load_trained(run)
    loaded = load_pretrained(tmp_path / "il2")
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_export_of_a_missing_checkpoint_is_exit_2(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no checkpoint at" in err
