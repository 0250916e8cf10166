"""`make demo`: the whole Shusheng chain on a tiny InternLM2 model, on CPU, offline, in about a minute.

    corpus   embedded raw documents -> normalize, language id, length filter, PII redaction, MinHash dedup ->
             Megatron token shards (with a BPE tokenizer trained here, carrying InternLM2's chat tokens)
    evo      pretrain a tiny InternLM2 on those shards (document packing), export a Hugging Face folder
    tuner    supervised fine-tuning of the pretrained model on tool-calling conversations (loss on the assistant's
             tokens), saved as a Llama-format folder
    deploy   the serving engine answers a user's question with greedy decoding; the chat parser turns the reply
             into an OpenAI `tool_calls` entry; the engine's output equals the reference `generate`

Writes `report.md` (readable) and `report.json` into --out, plus every stage's own outputs beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import CITIES, TOOLS, raw_documents, sft_records, tool_conversation  # noqa: E402

from shusheng.corpus.pipeline import PipelineConfig, run_pipeline  # noqa: E402
from shusheng.deploy import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from shusheng.evo import TrainConfig, export  # noqa: E402
from shusheng.evo import train as pretrain  # noqa: E402
from shusheng.model import generate, load_pretrained, load_tokenizer  # noqa: E402
from shusheng.model.chat import parse, render  # noqa: E402
from shusheng.model.training import load_config  # noqa: E402
from shusheng.tuner import Trainer  # noqa: E402
from shusheng.tuner import load as load_tuner_config  # noqa: E402

SPECIALS = ["<unk>", "<s>", "</s>", "<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>",
            "<|im_end|>", "<|im_start|>"]
TRAIN_CITIES, HELD_OUT = CITIES[:8], CITIES[8:]


def step(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def make_tokenizer(folder: Path, texts: list[str]):
    """A byte-level BPE trained on the raw documents and the chat renderings, with the chat tokens as specials."""
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(texts, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    raw.save(str(folder / "tokenizer.json"))
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "chat_template_name": "internlm2"}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return load_tokenizer(folder)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_corpus(out: Path, docs: list[dict], tok_dir: Path) -> dict:
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    write_atomic(raw / "web-00000.jsonl", "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    report = run_pipeline(PipelineConfig(
        input=str(raw), output=str(out / "corpus"), progress=False,
        stages=[{"stage": "normalize"}, {"stage": "language_id", "keep": ["en", "zh"]},
                {"stage": "length", "min_chars": 40, "min_words": None}, {"stage": "pii_redact"}],
        dedup={"method": "minhash", "preset": "internlm2"},
        tokenize={"tokenizer": str(tok_dir), "docs_per_shard": 1000}))
    return report


def run_pretrain(out: Path, tok, tok_dir: Path, steps: int) -> tuple[dict, Path]:
    overrides = [
        "model.preset=tiny", f"model.tokenizer={tok_dir}",
        f"model.overrides={{vocab_size: {tok.vocab_size}, bos_token_id: {tok.bos_id}, eos_token_id: {tok.eos_id}, "
        f"pad_token_id: {tok.pad_id}}}",
        f"data.sources=[{{path: {out / 'corpus' / 'tokens'}}}]", "data.packing=documents",
        "seq_len=128", "micro_batch=8", f"steps={steps}", "optim.lr=3e-3", "optim.warmup_steps=10",
        "mixed_precision=fp32", "device=cpu", f"output={out / 'pretrain'}", "log_every=10",
        "checkpoint.resume=false",
    ]
    result = pretrain(load_config(TrainConfig, None, overrides))
    records = [json.loads(line) for line in (result.output / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    folder = export(result.output, out / "pretrained", format="internlm2", dtype="float32")
    return {"steps": result.step, "tokens": result.tokens, "first_loss": losses[0], "last_loss": losses[-1],
            "tokens_per_s": records[-1].get("tokens_per_s"), "export": str(folder)}, folder


def run_sft(out: Path, base: Path, epochs: int) -> tuple[dict, Path]:
    data = out / "sft.jsonl"
    records = sft_records(TRAIN_CITIES) * 4
    write_atomic(data, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    cfg_file = out / "sft.yaml"
    write_atomic(cfg_file, json.dumps({
        "task": "sft", "method": "full", "out": str(out / "sft"), "model": {"path": str(base)},
        "data": {"train": [str(data)], "max_length": 256},
        "optim": {"lr": 1e-3, "warmup_steps": 5},
        "train": {"epochs": epochs, "precision": "fp32", "device": "cpu", "log_every": 20, "resume": "never",
                  "save_format": "llama"}}))
    result = Trainer(load_tuner_config(cfg_file)).train()
    return {"records": len(records), "epochs": epochs, "loss": result["loss"], "model": str(out / "sft" / "model")}, \
        out / "sft" / "model"


def ask(engine: LLMEngine, model, tok, city: str) -> dict:
    prompt = render("internlm2", tool_conversation(city)[:2], tools=TOOLS, add_generation_prompt=True)
    params = SamplingParams(max_tokens=48, temperature=0.0, skip_special_tokens=False)  # the tool-call markers
    out = engine.generate([prompt], params)[0].outputs[0]
    ref = generate(model, prompt, tokenizer=tok, max_new_tokens=48, stop_ids=tok.stop_ids)
    parsed = parse("internlm2", out.text)
    call = parsed.tool_calls[0]["function"] if parsed.tool_calls else None
    ok = call is not None and call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": city}
    return {"city": city, "prompt": prompt, "reply": out.text, "content": parsed.content,
            "tool_calls": parsed.tool_calls, "tool_call_correct": ok,
            "engine_equals_reference": out.token_ids == ref.token_ids[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo-out", help="output folder (report and every stage's outputs)")
    p.add_argument("--pretrain-steps", type=int, default=150)
    p.add_argument("--sft-epochs", type=int, default=40)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t0 = time.time()
    timings, report = {}, {}

    docs = raw_documents()
    chats = [render("internlm2", tool_conversation(c), tools=TOOLS, add_generation_prompt=False) for c in CITIES]
    step(f"training a BPE tokenizer on {len(docs)} raw documents and {len(chats)} chats")
    tok = make_tokenizer(out / "tokenizer", [d["text"] for d in docs] + chats)
    report["tokenizer"] = {"vocab_size": tok.vocab_size, "fingerprint": tok.fingerprint()}

    t = time.time()
    c = run_corpus(out, docs, out / "tokenizer")
    timings["corpus"] = time.time() - t
    report["corpus"] = {"docs_in": c["docs_in"], "docs_out": c["docs_out"], "stages": c["stages"],
                        "dedup": c.get("dedup", {}), "tokens": c["tokenize"].get("num_tokens")}
    step(f"corpus: {c['docs_in']} documents in, {c['docs_out']} out, {report['corpus']['tokens']} tokens in shards")

    t = time.time()
    report["pretrain"], base = run_pretrain(out, tok, out / "tokenizer", args.pretrain_steps)
    timings["pretrain"] = time.time() - t
    pr = report["pretrain"]
    step(f"evo: {pr['steps']} steps, {pr['tokens']:,} tokens, loss {pr['first_loss']:.3f} -> {pr['last_loss']:.3f}; "
         f"exported {base}")

    t = time.time()
    report["sft"], merged = run_sft(out, base, args.sft_epochs)
    timings["sft"] = time.time() - t
    step(f"tuner: SFT on {report['sft']['records']} tool conversations, final loss {report['sft']['loss']:.4f}; "
         f"saved {merged} (Llama format)")

    t = time.time()
    engine = LLMEngine(EngineConfig.from_kwargs(str(merged), device="cpu", dtype="float32"))
    model, mtok = load_pretrained(merged), load_tokenizer(merged)
    report["serve"] = [ask(engine, model, mtok, city) for city in TRAIN_CITIES + HELD_OUT]
    timings["serve"] = time.time() - t
    for r in report["serve"]:
        step(f"deploy: {r['city']}: reply {r['reply']!r} -> tool call correct: {r['tool_call_correct']}; "
             f"engine == reference generate: {r['engine_equals_reference']}")
    report["seconds"] = {k: round(v, 1) for k, v in timings.items()} | {"total": round(time.time() - t0, 1)}
    for name, cities in (("trained", TRAIN_CITIES), ("held_out", HELD_OUT)):
        hits = [r["tool_call_correct"] for r in report["serve"] if r["city"] in cities]
        report[f"{name}_city_accuracy"] = sum(hits) / len(hits)

    write_atomic(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_atomic(out / "report.md", markdown(report))
    step(f"tool calls correct: trained cities {report['trained_city_accuracy']:.0%}, held-out cities "
         f"{report['held_out_city_accuracy']:.0%}")
    step(f"done in {report['seconds']['total']} s; report: {out / 'report.md'}")
    ok = report["trained_city_accuracy"] >= 0.75 and all(r["engine_equals_reference"] for r in report["serve"])
    return 0 if ok else 1


def _removed(c: dict) -> str:
    """'language -1, length_min_chars -1, near-duplicates -72' from the corpus report."""
    parts = [f"{why} -{n}" for st in c["stages"].values() for why, n in st.get("removed", {}).items()]
    if c["dedup"]:
        parts.append(f"{c['dedup'].get('method', 'dedup')} duplicates -{c['dedup'].get('dropped', 0)}")
    return ", ".join(parts) or "nothing removed"


def markdown(r: dict) -> str:
    c, pr, s, sec = r["corpus"], r["pretrain"], r["sft"], r["seconds"]
    stages = [
        ("data", "shusheng-corpus", f"{c['docs_in']} raw documents -> {c['docs_out']} kept ({_removed(c)}); "
                                    f"{c['tokens']:,} tokens in Megatron shards", sec["corpus"]),
        ("pretraining", "shusheng-evo", f"{pr['steps']} steps, {pr['tokens']:,} tokens, loss {pr['first_loss']:.3f} "
                                        f"-> {pr['last_loss']:.3f}; exported `{pr['export']}`", sec["pretrain"]),
        ("fine-tuning", "shusheng-tuner", f"full SFT (loss on assistant tokens), {s['records']} tool conversations x "
                                          f"{s['epochs']} epochs, final loss {s['loss']:.4f}; saved `{s['model']}` "
                                          "(Llama format)", sec["sft"]),
        ("serving", "shusheng-deploy", "greedy answers below, each checked against the reference `generate`",
         sec["serve"]),
    ]
    table = "\n".join(f"| {a} | {b} | {t} | {n} |" for a, b, t, n in stages)
    rows = "\n".join(
        f"| {q['city']} ({'trained' if q['city'] in TRAIN_CITIES else 'held out'}) | `{json.dumps(q['reply'])}` | "
        f"`{q['tool_calls'][0]['function']['arguments'] if q['tool_calls'] else '-'}` | **{q['tool_call_correct']}** | "
        f"{q['engine_equals_reference']} |" for q in r["serve"])
    return f"""# Shusheng demo report

The whole chain on a tiny InternLM2 model, on CPU: corpus -> evo -> tuner -> deploy ({sec['total']} s).

| stage | package | result | seconds |
|---|---|---|---:|
{table}

## The served model calls the tool

Correct tool calls: **{r['trained_city_accuracy']:.0%}** of the cities seen in fine-tuning,
{r['held_out_city_accuracy']:.0%} of held-out cities (a model this small memorizes the pairs rather than learning
to copy the city from the question).

| city | reply | get_weather arguments | correct | engine == reference |
|---|---|---|---|---|
{rows}

Prompt (InternLM2 chat template with the tool declared):

```
{r['serve'][0]['prompt']}
```

Tokenizer: byte-level BPE, {r['tokenizer']['vocab_size']} ids, trained here on the raw documents and chats.
"""


if __name__ == "__main__":
    sys.exit(main())
