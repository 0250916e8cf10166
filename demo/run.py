"""`make demo`: the Shusheng chain on a tiny InternLM2 model, on CPU, offline, in well under a minute.

Everything is embedded: a small BPE tokenizer is trained on the text below (with InternLM2's chat tokens), a tiny
InternLM2 model is fine-tuned on one tool-using conversation (loss on assistant tokens only), saved as an InternLM2
checkpoint, loaded back (bit-exact), converted to Llama format (same logits), and asked the conversation's question:
greedy decoding reproduces the tool call, which the chat parser turns back into an OpenAI `tool_calls` entry.
Writes `report.md` and `report.json` into --out. Later stages of the chain (data, pretraining, serving, evaluation,
agents) join this script as their packages land.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from shusheng.model import ModelConfig, build_model, generate, load_pretrained, load_tokenizer, save_pretrained
from shusheng.model.chat import parse, render, render_ids

CORPUS = """Shusheng is a full-chain toolkit for InternLM2 and Llama models: data, pretraining, fine-tuning,
serving, evaluation and agents. The weather in Shanghai is mild in spring. 上海的天气很好。
Tools are declared in a system message; the assistant calls them and reads the result from the environment.
""".split("\n")
SPECIALS = ["<unk>", "<s>", "</s>", "<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>",
            "<|im_end|>", "<|im_start|>"]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather in Shanghai?"},
    {"role": "assistant", "content": "Let me check.", "tool_calls": [{"id": "call_0", "type": "function", "function": {
        "name": "get_weather", "arguments": json.dumps({"city": "Shanghai"})}}]},
]


def step(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def make_tokenizer(folder: Path):
    """Train a byte-level BPE on the embedded text and the chat itself; save it as tokenizer.json + config."""
    texts = CORPUS + [render("internlm2", CONVERSATION, tools=TOOLS, add_generation_prompt=False)]
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(texts, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    raw.save(str(folder / "tokenizer.json"))
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "chat_template_name": "internlm2"}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return load_tokenizer(folder)


def finetune(model, ids: list[int], trainable: list[bool], steps: int) -> list[float]:
    """A few AdamW steps on one conversation, loss on assistant tokens only (the SFT mask)."""
    x = torch.tensor([ids[:-1]])
    y = torch.tensor([t if m else -100 for t, m in zip(ids[1:], trainable[1:], strict=True)])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(x)[0].float(), y, ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo-out", help="output folder (report, checkpoints)")
    p.add_argument("--steps", type=int, default=150, help="fine-tuning steps")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t0 = time.time()
    report: dict = {}

    step("training a small BPE tokenizer with the InternLM2 chat tokens")
    tok = make_tokenizer(out / "tokenizer")
    report["tokenizer"] = {"vocab_size": tok.vocab_size, "stop_ids": tok.stop_ids, "fingerprint": tok.fingerprint()}

    cfg = ModelConfig.from_name("tiny", vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                                pad_token_id=tok.pad_id)
    model = build_model(cfg, seed=0)
    step(f"built a tiny InternLM2 model: {cfg.num_params:,} parameters, {cfg.num_layers} layers, "
         f"{cfg.num_heads} heads / {cfg.num_kv_heads} KV heads")

    ids, trainable = render_ids("internlm2", tok, CONVERSATION, tools=TOOLS)
    step(f"rendered the tool conversation: {len(ids)} tokens, {sum(trainable)} trainable (assistant turn)")
    losses = finetune(model, ids, trainable, args.steps)
    step(f"fine-tuned {args.steps} steps: loss {losses[0]:.3f} -> {losses[-1]:.4f}")
    report["finetune"] = {"steps": args.steps, "first_loss": losses[0], "last_loss": losses[-1]}
    model.eval()

    ckpt = save_pretrained(model, out / "checkpoint-internlm2", format="internlm2", tokenizer=tok)
    loaded = load_pretrained(ckpt)
    probe = torch.tensor([ids])
    with torch.no_grad():
        same = torch.equal(loaded(probe), model(probe))
        llama = load_pretrained(save_pretrained(loaded, out / "checkpoint-llama", format="llama", tokenizer=tok))
        llama_diff = (llama(probe) - model(probe)).abs().max().item()
    step(f"saved {ckpt} and loaded it back: logits bit-exact = {same}; Llama-format copy max |diff| = {llama_diff}")
    report["checkpoint"] = {"path": str(ckpt), "files": sorted(f.name for f in ckpt.iterdir()),
                            "reload_bit_exact": same, "llama_format_max_abs_diff": llama_diff}

    prompt = render("internlm2", CONVERSATION[:2], tools=TOOLS, add_generation_prompt=True)
    gen = generate(loaded, prompt, tokenizer=load_tokenizer(ckpt), max_new_tokens=40, stop_ids=tok.stop_ids)
    reply = gen.texts[0]
    parsed = parse("internlm2", reply)
    step(f"greedy reply ({len(gen.token_ids[0])} tokens, finish={gen.finish_reasons[0]}): {reply!r}")
    step(f"parsed: content={parsed.content!r}, tool_calls={json.dumps(parsed.tool_calls)}")
    expected = CONVERSATION[2]["tool_calls"][0]["function"]
    ok = bool(parsed.tool_calls) and parsed.tool_calls[0]["function"]["name"] == expected["name"] and json.loads(
        parsed.tool_calls[0]["function"]["arguments"]) == json.loads(expected["arguments"])
    report["generate"] = {"prompt": prompt, "reply": reply, "finish_reason": gen.finish_reasons[0],
                          "content": parsed.content, "tool_calls": parsed.tool_calls, "tool_call_recovered": ok}
    report["seconds"] = round(time.time() - t0, 1)

    write_atomic(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_atomic(out / "report.md", markdown(report))
    step(f"done in {report['seconds']} s; report: {out / 'report.md'}")
    return 0 if (same and ok) else 1


def markdown(r: dict) -> str:
    g, c, f = r["generate"], r["checkpoint"], r["finetune"]
    return f"""# Shusheng demo report

| stage | result |
|---|---|
| tokenizer | BPE, {r['tokenizer']['vocab_size']} ids, stop ids {r['tokenizer']['stop_ids']} |
| fine-tune (assistant tokens only) | {f['steps']} steps, loss {f['first_loss']:.3f} -> {f['last_loss']:.4f} |
| InternLM2 checkpoint | `{c['path']}`: {', '.join(c['files'])} |
| reload | logits bit-exact: **{c['reload_bit_exact']}** |
| Llama-format copy | max abs logit difference {c['llama_format_max_abs_diff']} |
| greedy generation | finish reason `{g['finish_reason']}` |
| tool call recovered by the parser | **{g['tool_call_recovered']}** |

## Prompt (InternLM2 chat template with a tool declaration)

```
{g['prompt']}
```

## Reply

```
{g['reply']}
```

Parsed content: `{g['content']}`

Parsed tool calls:

```json
{json.dumps(g['tool_calls'], indent=2)}
```

Total time: {r['seconds']} s on CPU.
"""


if __name__ == "__main__":
    sys.exit(main())
