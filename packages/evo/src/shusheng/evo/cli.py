"""`shusheng-evo`: train, export, estimate.

    shusheng-evo train CONFIG.yaml [key=value ...] [--nproc N]
    shusheng-evo export RUN_OR_CHECKPOINT --output DIR [--format llama|internlm2] [--tokenizer PATH]
    shusheng-evo estimate CONFIG.yaml [key=value ...] [--gpus N]

Bad input (a config key, a value, a missing shard) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from shusheng.model.training import ConfigError, TrainingDiverged, load_config

from .config import TrainConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shusheng-evo", description="Pretraining on packed token shards.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train (or resume) from a YAML config")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="key=value, dotted for nested keys (optim.lr=1e-3)")
    t.add_argument("--nproc", type=int, default=1, help="processes on this machine (launches torchrun)")
    e = sub.add_parser("export", help="write a Hugging Face folder from a checkpoint")
    e.add_argument("checkpoint", help="a step-N folder, a checkpoints folder or a run's output folder")
    e.add_argument("--output", required=True)
    e.add_argument("--format", default="llama", choices=["llama", "internlm2", "qwen2", "mistral"])
    e.add_argument("--tokenizer", default=None, help="tokenizer file/folder (default: the run's)")
    e.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    s = sub.add_parser("estimate", help="parameters, FLOPs/token and memory per GPU before launching")
    s.add_argument("config")
    s.add_argument("overrides", nargs="*")
    s.add_argument("--gpus", type=int, default=1, help="total processes (GPUs) of the planned run")
    s.add_argument("--json", action="store_true")
    return p


def _train(a) -> int:
    if a.nproc > 1 and "WORLD_SIZE" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={a.nproc}",
               "-m", "shusheng.evo.cli", "train", a.config, *a.overrides]
        return subprocess.call(cmd)
    from .train import train

    cfg = load_config(TrainConfig, a.config, a.overrides)
    result = train(cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"done: step {result.step}, loss {result.loss:.4f}"
              + (f", val_loss {result.val_loss:.4f}" if result.val_loss is not None else "")
              + f", {result.tokens} tokens; metrics in {result.output}/metrics.jsonl")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.cmd == "train":
            return _train(a)
        if a.cmd == "export":
            from .export import export

            path = export(a.checkpoint, a.output, a.format, a.tokenizer, a.dtype)
            print(f"exported {path} ({a.format} format)")
            return 0
        from .estimate import estimate, format_estimate

        e = estimate(load_config(TrainConfig, a.config, a.overrides), a.gpus)
        print(json.dumps(e, indent=2) if a.json else format_estimate(e))
        return 0
    except (ConfigError, FileNotFoundError) as err:
        print(f"shusheng-evo {a.cmd}: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"shusheng-evo {a.cmd}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
