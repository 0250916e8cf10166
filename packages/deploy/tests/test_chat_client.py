"""The chat client: piped sessions on the in-process engine and against the real server, parity with greedy replies."""

import argparse
import io

import pytest

from shusheng.deploy import SamplingParams
from shusheng.deploy.chat_client import (
    ChatSession,
    EngineBackend,
    ServerBackend,
    add_arguments,
    main_from_args,
    run_repl,
)

SCRIPT = "hello\n/system be brief\nhi\n/reset\nbye\n/exit\nnever read\n"
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def server(tiny_ckpt, cli_server):
    """`shusheng-deploy serve` on the tiny checkpoint (a subprocess on a free loopback port)."""
    with cli_server(tiny_ckpt) as url:
        yield url


class Recorder:
    """Wraps a backend and keeps the messages of every request it streams."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def stream(self, messages, temperature, max_tokens):
        self.calls.append([dict(m) for m in messages])
        return self.backend.stream(messages, temperature, max_tokens)


@pytest.fixture(scope="module")
def local(tiny_ckpt):
    return EngineBackend(str(tiny_ckpt), device="cpu")


def local_greedy(backend: EngineBackend, messages) -> str:
    """The non-streamed greedy reply of the offline pipeline."""
    return backend.pipe(messages, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)).outputs[0].text


def parse(argv):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(argv)


def check_script_calls(calls):
    """The requests SCRIPT makes: history grows, the system prompt joins, /reset clears the turns."""
    assert len(calls) == 3
    assert calls[0] == [{"role": "user", "content": "hello"}]
    assert calls[1][0] == {"role": "system", "content": "be brief"}
    assert [m["role"] for m in calls[1]] == ["system", "user", "assistant", "user"]
    assert calls[1][1]["content"] == "hello" and calls[1][3]["content"] == "hi"
    assert calls[2] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "bye"}]


def transcript(replies):
    return f"{replies[0]}\n(system prompt set)\n{replies[1]}\n(history cleared)\n{replies[2]}\n"


def test_local_session_history_system_and_reset(local):
    rec = Recorder(local)
    session = ChatSession(rec, temperature=0.0, max_tokens=MAX_TOKENS)
    out = io.StringIO()
    assert run_repl(session, io.StringIO(SCRIPT), out) == 0
    check_script_calls(rec.calls)
    replies = [local_greedy(local, c) for c in rec.calls]  # streamed replies equal non-streamed greedy ones
    assert out.getvalue() == transcript(replies)
    assert calls_reply(rec.calls[1]) == replies[0]  # the history holds the streamed reply
    assert session.history == [{"role": "user", "content": "bye"}, {"role": "assistant", "content": replies[2]}]
    assert session.messages[0] == {"role": "system", "content": "be brief"}
    assert "be brief" in local.last_prompt and "bye" in local.last_prompt and "hello" not in local.last_prompt
    assert local.last_prompt == local.pipe.render(rec.calls[2])


def calls_reply(call):
    return call[2]["content"]


def test_failed_or_abandoned_turn_leaves_no_trace(local):
    session = ChatSession(local, temperature=0.0, max_tokens=MAX_TOKENS)
    session.ask("hello")
    before = list(session.history)
    stream = session.send("x " * 400)  # longer than the tiny model's 512-token context
    with pytest.raises(ValueError, match="maximum context length"):
        next(stream)
    assert session.history == before
    stream = session.send("more")
    next(stream, None)
    stream.close()  # the reader stops early: the turn is dropped and the engine is idle again
    assert session.history == before and not local.pipe.engine.has_unfinished()
    session.set_system("  ")
    assert session.system is None and session.messages == before


def test_main_local_checkpoint(tiny_ckpt, local):
    out = io.StringIO()
    args = parse([str(tiny_ckpt), "--device", "cpu", "--temperature", "0", "--max-tokens", str(MAX_TOKENS)])
    assert main_from_args(args, stdin=io.StringIO(SCRIPT), stdout=out) == 0
    calls = [[{"role": "user", "content": "hello"}]]
    replies = [local_greedy(local, calls[0])]
    calls.append([{"role": "system", "content": "be brief"}, calls[0][0], {"role": "assistant", "content": replies[0]},
                  {"role": "user", "content": "hi"}])
    replies.append(local_greedy(local, calls[1]))
    replies.append(local_greedy(local, [{"role": "system", "content": "be brief"}, {"role": "user", "content": "bye"}]))
    assert out.getvalue() == transcript(replies)


def test_server_session_matches_non_streamed_greedy(server, local):
    backend = ServerBackend(server)
    rec = Recorder(backend)
    session = ChatSession(rec, temperature=0.0, max_tokens=MAX_TOKENS)
    out = io.StringIO()
    assert run_repl(session, io.StringIO(SCRIPT), out) == 0
    check_script_calls(rec.calls)
    replies = [backend.complete(c, 0.0, MAX_TOKENS) for c in rec.calls]
    assert out.getvalue() == transcript(replies)
    assert replies == [local_greedy(local, c) for c in rec.calls]  # the server runs the same engine and template
    assert session.history[-1] == {"role": "assistant", "content": replies[2]}


def test_main_server_url(server):
    out = io.StringIO()
    args = parse([server + "/v1", "--temperature", "0", "--max-tokens", str(MAX_TOKENS), "--system", "be brief"])
    assert main_from_args(args, stdin=io.StringIO("hi\n"), stdout=out) == 0
    backend = ServerBackend(server)
    expected = backend.complete([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], 0.0,
                                MAX_TOKENS)
    assert out.getvalue() == expected + "\n"


def test_bad_targets_exit_2(tmp_path, capsys):
    assert main_from_args(parse([str(tmp_path / "missing")]), stdin=io.StringIO("")) == 2
    assert "is neither an http(s) URL nor a checkpoint folder" in capsys.readouterr().err
    assert main_from_args(parse(["http://127.0.0.1:9"]), stdin=io.StringIO("")) == 2
    err = capsys.readouterr().err
    assert err.startswith("shusheng-deploy: error: cannot reach") and err.count("\n") == 1


def test_local_tp_degree_checked_before_any_process(tiny_ckpt, capsys):
    """`--tp` goes to the local engine; one the checkpoint's 2 KV heads cannot be split by is refused (exit 2)."""
    assert main_from_args(parse([str(tiny_ckpt), "--device", "cpu", "--tp", "3"]), stdin=io.StringIO("")) == 2
    err = capsys.readouterr().err
    assert err.startswith("shusheng-deploy: error: tensor parallel degree 3 must divide") and err.count("\n") == 1
