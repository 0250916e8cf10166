"""`shusheng-corpus`: run a pipeline from YAML, or one step at a time.

    shusheng-corpus run PIPELINE.yaml [--executor local|ray] [--workers N]
    shusheng-corpus filter INPUT --output DIR [--stage normalize --stage gopher_quality ...]
    shusheng-corpus dedup INPUT --output DIR [--method exact|minhash] [--preset internlm2]
    shusheng-corpus train-tokenizer INPUT --vocab-size N --output DIR
    shusheng-corpus tokenize INPUT --tokenizer PATH --output DIR [--docs-per-shard N]
    shusheng-corpus train-quality --positive GOOD --negative BAD --output model.npz
    shusheng-corpus stats INPUT

Bad config or input prints one line naming the field or file and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

DEFAULT_FILTERS = ["normalize", "language_id", "gopher_quality", "gopher_repetition", "pii_redact"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shusheng-corpus", description="Shusheng pretraining data pipeline")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="the whole pipeline from a YAML config")
    r.add_argument("config")
    r.add_argument("--executor", choices=["local", "ray"], default=None)
    r.add_argument("--workers", type=int, default=None)
    r.add_argument("--output", default=None, help="override the config's output folder")
    f = sub.add_parser("filter", help="document stages only")
    f.add_argument("input", nargs="+")
    f.add_argument("--output", required=True)
    f.add_argument("--stage", action="append", default=None, help=f"a stage name (default: {DEFAULT_FILTERS})")
    d = sub.add_parser("dedup", help="exact or MinHash-LSH deduplication")
    d.add_argument("input", nargs="+")
    d.add_argument("--output", required=True)
    d.add_argument("--method", choices=["exact", "minhash"], default="minhash")
    d.add_argument("--preset", default="internlm2")
    t = sub.add_parser("train-tokenizer", help="train a byte-level BPE tokenizer")
    t.add_argument("input", nargs="+")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--output", required=True)
    k = sub.add_parser("tokenize", help="tokenize and pack into Megatron .bin/.idx shards")
    k.add_argument("input", nargs="+")
    k.add_argument("--tokenizer", required=True)
    k.add_argument("--output", required=True)
    k.add_argument("--docs-per-shard", type=int, default=None)
    k.add_argument("--shard-size-tokens", type=int, default=None, help="default 2**28 when neither is given")
    k.add_argument("--shuffle", action="store_true")
    q = sub.add_parser("train-quality", help="train the hashed n-gram quality classifier (for the quality_score stage)")
    q.add_argument("--positive", nargs="+", required=True, help="documents of the quality to keep")
    q.add_argument("--negative", nargs="+", required=True, help="documents to score low")
    q.add_argument("--output", required=True, help="model file for quality_score's `model` option")
    st = sub.add_parser("stats", help="document counts, sizes, lengths and languages")
    st.add_argument("input", nargs="+")
    for s in (f, d, k):
        s.add_argument("--executor", choices=["local", "ray"], default="local")
        s.add_argument("--workers", type=int, default=1)
    return p


def _run(cfg) -> int:
    from .pipeline import run_pipeline

    report = run_pipeline(cfg)
    print(f"{report['docs_in']:,} documents in, {report['docs_out']:,} out in {report['seconds']} s; "
          f"report: {cfg.output}/report.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        from .pipeline import PipelineConfig

        if a.command == "run":
            return _run(PipelineConfig.from_yaml(a.config, executor=a.executor, workers=a.workers, output=a.output))
        if a.command == "filter":
            stages = [{"stage": s} for s in (a.stage or DEFAULT_FILTERS)]
            return _run(PipelineConfig(input=a.input, output=a.output, stages=stages, executor=a.executor,
                                       workers=a.workers))
        if a.command == "dedup":
            spec = {"method": a.method} | ({"preset": a.preset} if a.method == "minhash" else {})
            return _run(PipelineConfig(input=a.input, output=a.output, dedup=spec, executor=a.executor,
                                       workers=a.workers))
        if a.command == "tokenize":
            spec = {"tokenizer": a.tokenizer, "shuffle": a.shuffle}
            if a.docs_per_shard:
                spec["docs_per_shard"] = a.docs_per_shard
            else:
                spec["shard_size_tokens"] = a.shard_size_tokens or 2**28
            return _run(PipelineConfig(input=a.input, output=a.output, tokenize=spec, executor=a.executor,
                                       workers=a.workers))
        if a.command == "train-tokenizer":
            from .io import list_inputs, read_file
            from .tokenize import train_tokenizer

            texts = (d.text for f in list_inputs(a.input) for d in read_file(f))
            path = train_tokenizer(texts, a.vocab_size, a.output)
            print(f"tokenizer written to {path}")
            return 0
        if a.command == "train-quality":
            from .io import list_inputs, read_file
            from .stages.quality import HashedNgramClassifier

            pos = [d.text for f in list_inputs(a.positive) for d in read_file(f)]
            neg = [d.text for f in list_inputs(a.negative) for d in read_file(f)]
            clf = HashedNgramClassifier()
            clf.train(pos + neg, [1] * len(pos) + [0] * len(neg))
            clf.save(a.output)
            print(f"quality classifier trained on {len(pos)} positive and {len(neg)} negative documents: {a.output}")
            return 0
        if a.command == "stats":
            print(json.dumps(stats(a.input), indent=2, ensure_ascii=False))
            return 0
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"shusheng-corpus: error: {e}", file=sys.stderr)
        return 2
    return 2


def stats(inputs: list[str]) -> dict:
    """Counts, bytes, length percentiles and (built-in detector) languages of the input documents."""
    from collections import Counter

    import numpy as np

    from .io import list_inputs, read_file
    from .stages import build_stage

    lang = build_stage({"stage": "language_id"})
    lengths, nbytes, langs = [], 0, Counter()
    for f in list_inputs(inputs):
        for doc in read_file(f):
            lengths.append(len(doc.text))
            nbytes += len(doc.text.encode())
            langs[lang.process(doc).metadata.get("language", "unknown")] += 1
    q = np.percentile(lengths, [50, 90, 99]).tolist() if lengths else [0, 0, 0]
    return {"documents": len(lengths), "bytes": nbytes, "chars": int(sum(lengths)),
            "length_p50": q[0], "length_p90": q[1], "length_p99": q[2], "languages": dict(langs.most_common())}


if __name__ == "__main__":
    sys.exit(main())
