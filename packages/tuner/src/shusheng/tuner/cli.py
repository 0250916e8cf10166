"""`shusheng-tuner`: train, merge, chat, score, list-templates, check-data.

    shusheng-tuner train CONFIG.yaml [key=value ...]          # also under torchrun for FSDP2 full fine-tuning
    shusheng-tuner merge ADAPTER OUT [--base PATH] [--format llama|internlm2] [--dtype bfloat16]
    shusheng-tuner chat CHECKPOINT [--adapter PATH] [--system TEXT] [--temperature 0.7]
    shusheng-tuner score REWARD_MODEL --data FILE [--base PATH] [--out results.jsonl]
    shusheng-tuner list-templates
    shusheng-tuner check-data FILE --tokenizer PATH [--template NAME] [--index 0] [--max-length 2048]

Bad input (an unknown config key, an unreadable data file, a missing checkpoint) prints one line on stderr and
exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

DTYPES = ("bfloat16", "float16", "float32")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shusheng-tuner", description="Shusheng fine-tuning")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="SFT / DPO / reward model training from a YAML config")
    t.add_argument("config", help="the YAML config")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4 lora.rank=8")
    m = sub.add_parser("merge", help="fold a LoRA adapter into its base and write a Hugging Face folder")
    m.add_argument("adapter", help="the adapter folder (out/adapter of a LoRA run)")
    m.add_argument("out", help="the folder to write")
    m.add_argument("--base", default=None, help="the base checkpoint (default: the one the adapter records)")
    m.add_argument("--format", default=None, choices=["llama", "internlm2"], help="default: the base's format")
    m.add_argument("--dtype", default=None, choices=DTYPES, help="default: the base's dtype")
    c = sub.add_parser("chat", help="terminal chat with a checkpoint (streaming)")
    c.add_argument("path", help="a checkpoint folder (the base, when --adapter is given)")
    c.add_argument("--adapter", default=None, help="a LoRA adapter folder, folded in at load")
    c.add_argument("--template", default=None, help="default: the tokenizer's (internlm2, llama3, chatml)")
    c.add_argument("--system", default=None, help="system prompt")
    c.add_argument("--max-new-tokens", type=int, default=512)
    c.add_argument("--temperature", type=float, default=0.0)
    c.add_argument("--top-k", type=int, default=0)
    c.add_argument("--top-p", type=float, default=1.0)
    c.add_argument("--seed", type=int, default=None)
    c.add_argument("--device", default="auto")
    c.add_argument("--dtype", default=None, choices=DTYPES)
    s = sub.add_parser("score", help="score responses with a reward model")
    s.add_argument("path", help="a reward model folder (full model + reward_head.safetensors, or an adapter)")
    s.add_argument("--data", required=True, help="preference pairs, or prompts with a list of `responses`")
    s.add_argument("--base", default=None, help="the base checkpoint of an adapter (default: recorded in it)")
    s.add_argument("--out", default=None, help="write one JSON result per record here (default: stdout)")
    s.add_argument("--device", default="auto")
    sub.add_parser("list-templates", help="the chat templates")
    d = sub.add_parser("check-data", help="how a data file's samples render and which tokens are trained")
    d.add_argument("file", help="a .json / .jsonl / .parquet file, or hf:owner/name")
    d.add_argument("--tokenizer", required=True, help="a tokenizer file, or a folder holding one")
    d.add_argument("--template", default=None, help="default: the tokenizer's, else internlm2")
    d.add_argument("--index", type=int, default=0, help="the record to show")
    d.add_argument("--count", type=int, default=1, help="how many records to show from --index")
    d.add_argument("--train-on", default="assistant", choices=["assistant", "all"])
    d.add_argument("--system", default=None, help="system prompt for conversations without one")
    d.add_argument("--max-length", type=int, default=2048, help="for the packing report")
    d.add_argument("--overflow", default="truncate", choices=["truncate", "drop", "error"])
    return p


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _dtype(name: str | None):
    import torch

    return None if name is None else getattr(torch, name)


def cmd_train(a: argparse.Namespace) -> int:
    from . import distributed
    from .config import load
    from .trainer import Trainer

    cfg = load(a.config, a.overrides)
    ok = False
    try:
        Trainer(cfg).train()
        ok = True
    finally:
        distributed.teardown(ok)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a rank of a torchrun job, its files written: leave now
        from shusheng.model.parallel import exit_rank

        exit_rank(0)
    return 0


def cmd_merge(a: argparse.Namespace) -> int:
    from .merge import merge

    out = merge(a.adapter, a.out, base=a.base, format=a.format, dtype=_dtype(a.dtype))
    print(out)
    return 0


def cmd_chat(a: argparse.Namespace) -> int:
    from .chat import ChatSession, load_for_chat, run_terminal

    model, tok = load_for_chat(a.path, a.adapter, _dtype(a.dtype), _device(a.device))
    session = ChatSession(model, tok, a.template, a.system, a.max_new_tokens, a.temperature, a.top_k, a.top_p, a.seed)
    run_terminal(session)
    return 0


def cmd_score(a: argparse.Namespace) -> int:
    from .io import write_text
    from .score import load_scorer, score_file

    scorer = load_scorer(a.path, a.base, _device(a.device))
    results, summary = score_file(scorer, a.data)
    lines = "".join(json.dumps(r) + "\n" for r in results)
    if a.out:
        write_text(a.out, lines)
    else:
        sys.stdout.write(lines)
    print(json.dumps(summary), file=sys.stderr)
    return 0


def cmd_list_templates(a: argparse.Namespace) -> int:
    from shusheng.model.chat import get_template, list_templates

    for name in list_templates():
        t = get_template(name)
        print(f"{name}\tend of turn {t.end_of_turn}\troles {', '.join(t.roles)}")
    return 0


def cmd_check_data(a: argparse.Namespace) -> int:
    from shusheng.model import load_tokenizer

    from .config import Source
    from .data import Preference, encode, encode_pair, load_source, pack, resolve_template
    from .data.check import show_sample

    tok = load_tokenizer(a.tokenizer)
    template = resolve_template(a.template, tok)
    records = load_source(Source(a.file))
    color = sys.stdout.isatty()
    units = []
    for i, ex in enumerate(records.examples):
        where = records.where(i)
        if isinstance(ex, Preference):
            units.append(encode_pair(ex, tok, template, None, where))
        else:
            units.append((encode(ex, tok, template, a.train_on, a.system, where),))
    print(f"{a.file}: {len(records.examples)} {records.format} records, template {template}")
    for i in range(a.index, min(a.index + a.count, len(units))):
        for name, doc in zip(("chosen", "rejected") if len(units[i]) == 2 else ("sample",), units[i], strict=True):
            print(f"\n--- record {i} {name}: {len(doc)} tokens, {doc.num_trained} trained "
                  f"({'marked' if color else 'between [[ and ]]'})")
            print(show_sample(doc, tok, color))
    _, report = pack(units, a.max_length, a.overflow)
    print(f"\npacking at max_length={a.max_length}: {report.summary()}")
    return 0


COMMANDS = {"train": cmd_train, "merge": cmd_merge, "chat": cmd_chat, "score": cmd_score,
            "list-templates": cmd_list_templates, "check-data": cmd_check_data}


def main(argv: list[str] | None = None) -> int:
    """Runs a command; bad input prints `error: ...` on stderr and returns 2."""
    a = parser().parse_args(argv)
    from shusheng.model.training import TrainingDiverged

    # ConfigError, DataError and CheckpointError are ValueErrors; so are settings that cannot work here (QLoRA
    # without bitsandbytes, paged optimizers without CUDA). Anything else is a bug and keeps its traceback.
    try:
        return COMMANDS[a.command](a)
    except (ValueError, FileNotFoundError, TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
