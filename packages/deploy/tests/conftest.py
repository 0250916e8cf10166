import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run in its interpreter on CPU; must be set before triton loads
    os.environ.setdefault("TRITON_INTERPRET", "1")
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from shusheng.deploy.bench import save_random_checkpoint
from shusheng.model import ModelConfig, build_model, load_tokenizer, save_pretrained

TEXT = [
    "The quick brown fox jumps over the lazy dog. Shusheng serves InternLM2 and Llama models.",
    "Paged attention stores keys and values in blocks; continuous batching keeps the GPU busy.",
    "你好，世界。 Streaming detokenization never splits a character. 😀",
]
SPECIALS = ["<unk>", "<s>", "</s>", "<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>",
            "<|im_end|>", "<|im_start|>"]


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def make_tokenizer(folder, vocab_size=300):
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(TEXT, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    raw.save(str(folder / "tokenizer.json"))
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "chat_template_name": "internlm2"}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return load_tokenizer(folder)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A tiny InternLM2 checkpoint with its tokenizer; weights scaled up so greedy argmax has clear margins."""
    folder = tmp_path_factory.mktemp("tiny")
    tok = make_tokenizer(folder / "tok")
    cfg = ModelConfig.from_name("tiny", vocab_size=tok.vocab_size, num_heads=4, num_kv_heads=2,
                                bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id,
                                max_position_embeddings=512)
    return save_random_checkpoint(folder / "ckpt", cfg, tok, std=0.3)


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
_CALL = [{"id": "call_0", "type": "function",
          "function": {"name": "get_weather", "arguments": json.dumps({"city": "Shanghai"})}}]
TOOL_CONVERSATIONS = [  # a call after some text, and a call alone (what a forced tool_choice continues)
    [{"role": "user", "content": "What is the weather in Shanghai?"},
     {"role": "assistant", "content": "Let me check.", "tool_calls": _CALL}],
    [{"role": "user", "content": "Weather in Shanghai, please."},
     {"role": "assistant", "content": "", "tool_calls": _CALL}],
]


@pytest.fixture(scope="session")
def tool_ckpt(tmp_path_factory):
    """A tiny InternLM2 model fine-tuned (on its assistant tokens) to answer two weather questions with tool calls."""
    from shusheng.model.chat import render_ids

    folder = tmp_path_factory.mktemp("tool")
    tok = make_tokenizer(folder / "tok", vocab_size=400)
    cfg = ModelConfig.from_name("tiny", vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                                pad_token_id=tok.eos_id, max_position_embeddings=512)
    torch.manual_seed(0)
    model = build_model(cfg, seed=0)
    batch = []
    for conv in TOOL_CONVERSATIONS:
        ids, mask = render_ids("internlm2", tok, conv, tools=TOOLS)
        batch.append((torch.tensor([ids[:-1]]), torch.tensor([t if m else -100 for t, m in zip(ids[1:], mask[1:],
                                                                                              strict=True)])))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        loss = sum(torch.nn.functional.cross_entropy(model(x)[0], y, ignore_index=-100) for x, y in batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1
    save_pretrained(model.eval(), folder / "ckpt", format="internlm2", tokenizer=tok)
    return folder / "ckpt"


@pytest.fixture(scope="session")
def cli_server(tmp_path_factory):
    """A factory: `with cli_server(ckpt, *args) as url:` runs `shusheng-deploy serve ckpt --device cpu *args` as a
    subprocess on a free loopback port, waits for /health (bounded in count and time), and stops it afterwards."""
    import httpx

    @contextlib.contextmanager
    def start(ckpt, *args):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = tmp_path_factory.mktemp("server") / "server.log"
        cmd = [sys.executable, "-m", "shusheng.deploy.cli", "serve", str(ckpt), "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", *args]
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ))
        start.pid = proc.pid  # the server's process, for tests that look at its children
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            for _ in range(1800):
                if proc.poll() is not None:
                    pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    pytest.fail(f"the server did not become healthy in 180 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(15)

    return start
