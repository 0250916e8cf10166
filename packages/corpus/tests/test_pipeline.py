"""The pipeline end to end: stages per shard, dedup, tokenize, reports, resume after a kill, Ray == local, CLI."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from shusheng.corpus.cli import main
from shusheng.corpus.pipeline import PipelineConfig, run_pipeline
from shusheng.corpus.tokenize import IndexedDatasetReader, load_encoder, train_tokenizer

EN = ("The committee met on Tuesday to review the annual budget and discussed several proposals for the new "
      "library, the park renovation and the expansion of public transport in the northern district. ")
ZH = "今天天气很好，我们一起去公园散步。城市的图书馆正在扩建，市民们对新的公共交通计划表示欢迎。"
STAGES = [{"stage": "normalize"}, {"stage": "length", "min_words": None, "min_chars": 40},
          {"stage": "pii_redact"}]


def make_inputs(folder: Path, shards=3, per_shard=20):
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for s in range(shards):
        with open(folder / f"part{s}.jsonl", "w") as f:
            for i in range(per_shard):
                text = (EN if i % 2 else ZH) * (1 + i % 3) + f" contact me at user{n}@example.com"
                if i % 7 == 0:
                    text = "too short"
                if i % 5 == 4:  # an exact copy of an earlier document in another shard
                    text = (EN * 2) + " contact me at user1@example.com"
                f.write(json.dumps({"id": f"d{n}", "text": text, "url": f"https://site{n}.org/x"}) + "\n")
                n += 1
    return n


def read_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def outputs(out: Path) -> dict[str, list[dict]]:
    return {str(p.relative_to(out)): read_gz(p) for p in sorted(out.rglob("*.jsonl.gz"))}


def test_stages_dedup_tokenize_and_report(tmp_path):
    n = make_inputs(tmp_path / "in")
    tok = train_tokenizer([EN, ZH] * 20, 400, tmp_path / "tok")
    cfg = PipelineConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), stages=STAGES,
                         dedup={"method": "exact"}, tokenize={"tokenizer": str(tok), "docs_per_shard": 10},
                         progress=False)
    report = run_pipeline(cfg)
    out = tmp_path / "out"
    assert report["docs_in"] == n
    removed = [r for f, rows in outputs(out).items() if f.startswith("removed/") for r in rows]
    reasons = {r["metadata"]["removed"]["reason"] for r in removed}
    assert reasons == {"length_min_chars", "exact_duplicate"}
    kept = [r for f, rows in outputs(out).items() if f.startswith("dedup/") for r in rows]
    assert len(kept) + len(removed) == n  # nothing silently lost
    assert all("<EMAIL>" in r["text"] and "@example.com" not in r["text"] for r in kept)
    assert len({r["text"] for r in kept}) == len(kept)  # exact duplicates gone, one of each kept
    assert report["stages"]["length"]["removed"] == {"length_min_chars": 6}  # i = 0 and 7 of each shard
    meta = json.loads((out / "tokens" / "metadata.json").read_text())
    assert meta["num_documents"] == len(kept)
    enc = load_encoder(tok)
    first = IndexedDatasetReader(out / "tokens" / meta["shards"][0]["prefix"].split("/")[-1])
    assert first[0].tolist() == enc.encode_batch([kept[0]["text"]])[0] + [enc.eos_id]
    md = (out / "report.md").read_text()
    assert "| length |" in md and "exact" in md and (out / "length.png").exists()
    # rerun: everything is done, nothing is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl.gz")}
    again = run_pipeline(cfg)
    assert again["docs_out"] == report["docs_out"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl.gz")} == stamps


def test_kill_midway_then_rerun_equals_uninterrupted(tmp_path):
    make_inputs(tmp_path / "in", shards=12, per_shard=400)
    base = {"input": str(tmp_path / "in"), "stages": STAGES,
            "dedup": {"method": "minhash", "preset": "internlm2"}, "progress": False}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({**base, "output": str(tmp_path / "a")}))
    proc = subprocess.Popen([sys.executable, "-m", "shusheng.corpus.cli", "run", str(tmp_path / "a.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((tmp_path / "a" / "stages").glob("*.done"))) >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(30)
    killed_midway = not (tmp_path / "a" / "report.json").exists()
    assert main(["run", str(tmp_path / "a.yaml")]) == 0
    run_pipeline(PipelineConfig(**{**base, "output": str(tmp_path / "b")}))
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b")
    assert not [p for p in (tmp_path / "a").rglob(".*tmp*")]  # nothing half-written left behind
    assert killed_midway  # the kill really landed before the end


def test_ray_executor_equals_local(tmp_path):
    pytest.importorskip("ray")
    make_inputs(tmp_path / "in", shards=3, per_shard=15)
    spec = dict(input=str(tmp_path / "in"), stages=STAGES, dedup={"method": "minhash"}, progress=False)
    run_pipeline(PipelineConfig(output=str(tmp_path / "local"), workers=2, **spec))
    run_pipeline(PipelineConfig(output=str(tmp_path / "ray"), executor="ray", workers=2, **spec))
    assert outputs(tmp_path / "local") == outputs(tmp_path / "ray")


def test_cli_steps_and_errors(tmp_path, capsys):
    make_inputs(tmp_path / "in", shards=2, per_shard=10)
    assert main(["filter", str(tmp_path / "in"), "--output", str(tmp_path / "f"), "--stage", "normalize",
                 "--stage", "pii_redact"]) == 0
    assert main(["dedup", str(tmp_path / "f" / "stages"), "--output", str(tmp_path / "d"),
                 "--method", "exact"]) == 0
    assert main(["train-tokenizer", str(tmp_path / "in"), "--vocab-size", "300", "--output", str(tmp_path / "t")]) == 0
    assert main(["tokenize", str(tmp_path / "d" / "dedup"), "--tokenizer", str(tmp_path / "t"),
                 "--output", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "tokens" / "metadata.json").exists()
    capsys.readouterr()
    # a rerun into the same folder with other dedup settings would reuse stale keys: refused, naming the change
    assert main(["dedup", str(tmp_path / "f" / "stages"), "--output", str(tmp_path / "d"),
                 "--method", "minhash"]) == 2
    err = capsys.readouterr().err
    assert "holds work made with other settings" in err and "method: 'exact'" in err and "now " in err
    assert main(["stats", str(tmp_path / "in")]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["documents"] == 20 and {"en", "zh"} <= set(stats["languages"])
    assert main(["filter", str(tmp_path / "nope"), "--output", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["filter", str(tmp_path / "in"), "--output", str(tmp_path / "x"), "--stage", "bogus"]) == 2
    assert "unknown stage 'bogus'" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("input: x\noutput: y\nstagez: []\n")
    assert main(["run", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown field(s) ['stagez']" in capsys.readouterr().err


def test_code_repositories_become_ordered_documents(tmp_path):
    repo = tmp_path / "repos" / "calc"
    (repo / "calc").mkdir(parents=True)
    (repo / "README.md").write_text("# calc\n")
    (repo / "calc" / "ops.py").write_text("def add(a, b):\n    return a + b\n")
    (repo / "calc" / "main.py").write_text("from calc.ops import add\n\nprint(add(1, 2))\n")
    report = run_pipeline(PipelineConfig(input=str(tmp_path / "repos"), output=str(tmp_path / "out"),
                                         input_format="code", stages=[{"stage": "pii_redact"}], progress=False))
    docs = outputs(tmp_path / "out")["stages/00000-repos.jsonl.gz"]
    assert report["docs_out"] == 1 and docs[0]["metadata"]["files"] == ["README.md", "calc/ops.py", "calc/main.py"]
    assert docs[0]["text"].index("def add") < docs[0]["text"].index("print(add")


def test_train_quality_then_filter_with_it(tmp_path):
    good = [f"The council approved the new library budget after a long public meeting number {i}." for i in range(40)]
    bad = [f"click here buy now cheap cheap pills casino win win {i} !!!" for i in range(40)]
    for name, texts in (("good", good), ("bad", bad)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    model = tmp_path / "quality.npz"
    assert main(["train-quality", "--positive", str(tmp_path / "good.jsonl"), "--negative",
                 str(tmp_path / "bad.jsonl"), "--output", str(model)]) == 0
    (tmp_path / "mixed").mkdir()
    mixed = [good[0].replace("0.", "7."), bad[0].replace(" 0 ", " 7 ")]
    (tmp_path / "mixed" / "m.jsonl").write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                                                        for i, t in enumerate(mixed)))
    run_pipeline(PipelineConfig(input=str(tmp_path / "mixed"), output=str(tmp_path / "out"), progress=False,
                                stages=[{"stage": "quality_score", "model": str(model), "min_score": 0.5}]))
    kept = outputs(tmp_path / "out")["stages/00000-m.jsonl.gz"]
    assert [d["id"] for d in kept] == ["0"] and kept[0]["metadata"]["quality_score"] > 0.5


@pytest.mark.parametrize("verify", ["exact", "estimate", "none"])
def test_distributed_minhash_clusters_equal_single_process(tmp_path, verify):
    import random

    from shusheng.corpus.dedup import MinHashConfig, near_duplicates

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(2000)]
    bases = [[rng.choice(vocab) for _ in range(200)] for _ in range(30)]
    texts = []
    for b in bases:
        for _ in range(rng.randint(1, 4)):  # copies with one edited span: J from ~0.9 (clear) to ~0.5 (verified out)
            words = list(b)
            at, size = rng.randrange(140), rng.choice([3, 3, 20, 40])
            words[at : at + size] = [rng.choice(vocab) for _ in range(size)]
            texts.append(" ".join(words))
    rng.shuffle(texts)
    (tmp_path / "in").mkdir()
    for s in range(4):
        part = texts[s::4]
        (tmp_path / "in" / f"p{s}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    spec = {"method": "minhash", "preset": "internlm2", "verify": verify}
    report = run_pipeline(PipelineConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), workers=2,
                                         dedup=spec, progress=False))
    ordered = [t for s in range(4) for t in texts[s::4]]  # global order = shard order, then line order
    expected = near_duplicates(ordered, range(len(ordered)), MinHashConfig.from_preset("internlm2", verify=verify))
    if verify != "none":  # verification really rejects some of this data's candidates
        unverified = MinHashConfig.from_preset("internlm2", verify="none")
        assert len(expected) < len(near_duplicates(ordered, range(len(ordered)), unverified))
    dropped = {r["text"] for f, rows in outputs(tmp_path / "out").items() if f.endswith(".dedup.jsonl.gz")
               for r in rows}
    assert dropped == {ordered[i] for i in expected}
    assert report["dedup"]["dropped"] == len(expected) > 0


def test_weighted_mixture_from_the_pipeline_config(tmp_path):
    for name, word, n in (("web", "alpha", 60), ("code", "beta", 20)):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.jsonl").write_text(
            "".join(json.dumps({"text": f"{word} " * 20 + str(i)}) + "\n" for i in range(n)))
    tok = train_tokenizer(["alpha beta " * 10 + "0123456789"] * 5, 300, tmp_path / "tok")
    mixture = {"web": {"match": "*web*", "weight": 0.5}, "code": {"match": "*code*", "weight": 0.5}}
    run_pipeline(PipelineConfig(input=[str(tmp_path / "web"), str(tmp_path / "code")], output=str(tmp_path / "out"),
                                tokenize={"tokenizer": str(tok), "docs_per_shard": 1000, "mixture": mixture},
                                progress=False))
    meta = json.loads((tmp_path / "out" / "tokens" / "metadata.json").read_text())
    shares = {n: r["share"] for n, r in meta["mixture"].items()}
    assert shares["web"] == pytest.approx(0.5, abs=0.05) and shares["code"] == pytest.approx(0.5, abs=0.05)


def test_hugging_face_dataset_input(tmp_path):
    pytest.importorskip("datasets", reason="needs the `hf` extra (datasets)")
    make_inputs(tmp_path / "in", shards=1, per_shard=10)
    report = run_pipeline(PipelineConfig(
        input="json", input_format="hf", hf_options={"data_files": str(tmp_path / "in" / "part0.jsonl")},
        output=str(tmp_path / "out"), stages=[{"stage": "pii_redact"}], progress=False))
    kept = outputs(tmp_path / "out")["stages/00000-hf.jsonl.gz"]
    assert report["docs_in"] == 10 and [d["id"] for d in kept] == [f"d{i}" for i in range(10)]
    assert kept[1]["source"] == "hf:json" and "<EMAIL>" in kept[1]["text"]
