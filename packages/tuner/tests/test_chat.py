"""Chat: streamed tokens equal the reference greedy `generate`; the terminal loop keeps and resets the history."""

import io

import torch

from shusheng.model import generate, load_pretrained
from shusheng.model.chat import render_ids
from shusheng.tuner.chat import ChatSession, run_terminal, stream_ids


def test_stream_equals_reference_generate(tiny_base, tiny_tok):
    model = load_pretrained(tiny_base, dtype=torch.float32).eval()
    prompt = render_ids("internlm2", tiny_tok, [{"role": "user", "content": "Hello there"}],
                        add_generation_prompt=True)[0]
    want = generate(model, [prompt], max_new_tokens=20, stop_ids=tiny_tok.stop_ids).token_ids[0]
    assert list(stream_ids(model, prompt, 20, tiny_tok.stop_ids)) == want
    sampled = [list(stream_ids(model, prompt, 12, [], temperature=0.8, top_p=0.9, seed=3)) for _ in range(2)]
    assert sampled[0] == sampled[1] and len(sampled[0]) == 12


def test_terminal_session_history(tiny_base, tiny_tok):
    model = load_pretrained(tiny_base, dtype=torch.float32).eval()
    ref = ChatSession(model, tiny_tok, system="Be brief.", max_new_tokens=6)
    first, second = "".join(ref.reply("Hi")), "".join(ref.reply("Again"))  # the second turn sees the first
    session = ChatSession(model, tiny_tok, system="Be brief.", max_new_tokens=6)
    out = io.StringIO()
    run_terminal(session, io.StringIO("Hi\nAgain\n/reset\nHi\n"), out)
    assert out.getvalue() == (f"assistant> {first}\nassistant> {second}\n(conversation reset)\n"
                              f"assistant> {first}\n")
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant"]
    assert session.messages[2]["content"] == first.strip()
