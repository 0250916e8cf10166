"""`shusheng-deploy chat URL_OR_PATH`: a terminal chat with a server or with a checkpoint run in-process.

    shusheng-deploy chat http://127.0.0.1:8000 --api-key sk-...      # any OpenAI-compatible server
    shusheng-deploy chat path/to/checkpoint --system "Be brief."      # the engine in this process
    printf 'hello\\n/reset\\nbye\\n' | shusheng-deploy chat path/to/checkpoint --temperature 0

Replies stream as they are generated. Lines are read from stdin one at a time, so the chat works in a terminal and
from a pipe. Commands: `/reset` clears the history, `/system TEXT` sets the system prompt (`/system` alone clears
it), `/help`, `/exit` (or end of input). A turn that fails or is interrupted (Ctrl-C) leaves no trace in the history.

The core is `ChatSession` (history, system prompt, `send(text)` -> text deltas) over a backend with one method,
`stream(messages, temperature, max_tokens)`: `ServerBackend` (the OpenAI chat API through the `openai` package) or
`EngineBackend` (the checkpoint's chat template and the engine's step loop).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from typing import Protocol, TextIO

HELP = "commands: /reset (clear the history), /system TEXT (set the system prompt), /help, /exit"


class Backend(Protocol):
    def stream(self, messages: list[dict], temperature: float, max_tokens: int | None) -> Iterator[str]: ...


class EngineBackend:
    """Generates in this process: renders the conversation with the checkpoint's chat template and steps the engine.

    Args:
        path: checkpoint folder.
        **engine_options: EngineConfig fields (device, dtype, max_model_len, ...).
    """

    def __init__(self, path: str, **engine_options):
        from .pipeline import pipeline

        self.pipe = pipeline(path, **engine_options)
        self.last_prompt: str | None = None  # the rendered prompt of the latest turn

    def stream(self, messages: list[dict], temperature: float, max_tokens: int | None) -> Iterator[str]:
        from .sampling_params import SamplingParams

        self.last_prompt = self.pipe.render(messages)
        engine = self.pipe.engine
        rid = engine.add_request(self.last_prompt, SamplingParams(temperature=temperature, max_tokens=max_tokens))
        try:
            while engine.has_unfinished():
                for out in engine.step():
                    if out.request_id == rid and out.outputs[0].delta_text:
                        yield out.outputs[0].delta_text
        finally:
            engine.abort(rid)  # frees the KV blocks when the reader stops early; a no-op once finished


class ServerBackend:
    """Streams from an OpenAI-compatible server's /v1/chat/completions.

    Args:
        url: the server, e.g. http://127.0.0.1:8000 (a trailing /v1 is accepted).
        model: model name; default the first of GET /v1/models.
        api_key: bearer token; default $OPENAI_API_KEY.
        timeout: seconds per request.

    Raises:
        ValueError: the server cannot be reached, rejects the key, or serves no model.
    """

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, timeout: float = 600.0):
        import openai

        base = url.rstrip("/").removesuffix("/v1") + "/v1"
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"  # the client insists on some key
        self.client = openai.OpenAI(base_url=base, api_key=key, timeout=timeout, max_retries=0)
        self.model = model
        try:
            models = self.client.models.list().data
        except openai.AuthenticationError:
            raise ValueError(f"{url} rejected the API key; pass --api-key or set OPENAI_API_KEY") from None
        except openai.APIConnectionError as e:
            raise ValueError(f"cannot reach {url}: {e.__cause__ or e}") from None
        except openai.APIStatusError as e:
            if model is None:
                raise ValueError(f"GET {base}/models answered HTTP {e.status_code}; name the model with --model") \
                    from None
            models = []
        if self.model is None:
            if not models:
                raise ValueError(f"{url} serves no model")
            self.model = models[0].id

    def stream(self, messages: list[dict], temperature: float, max_tokens: int | None) -> Iterator[str]:
        extra = {} if max_tokens is None else {"max_tokens": max_tokens}
        with self.client.chat.completions.create(model=self.model, messages=messages, temperature=temperature,
                                                 stream=True, **extra) as chunks:
            for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

    def complete(self, messages: list[dict], temperature: float, max_tokens: int | None) -> str:
        """The same request without streaming: the whole reply at once."""
        extra = {} if max_tokens is None else {"max_tokens": max_tokens}
        r = self.client.chat.completions.create(model=self.model, messages=messages, temperature=temperature, **extra)
        return r.choices[0].message.content or ""


class ChatSession:
    """A conversation: the system prompt, the user/assistant turns so far, and the sampling settings.

    Args:
        backend: where replies come from (`EngineBackend`, `ServerBackend`, or anything with `stream`).
        system: system prompt, or None.
        temperature: sampling temperature; 0 is greedy.
        max_tokens: most tokens per reply; None leaves it to the backend (up to the context limit).
    """

    def __init__(self, backend: Backend, system: str | None = None, temperature: float = 0.7,
                 max_tokens: int | None = None):
        self.backend = backend
        self.system = system or None
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.history: list[dict] = []  # user and assistant turns, without the system prompt

    @property
    def messages(self) -> list[dict]:
        """What the next request sends: the system prompt (if any) then the history."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + list(self.history)

    def send(self, text: str) -> Iterator[str]:
        """Add a user turn and stream the reply's text deltas; the reply joins the history once complete.

        A generator: nothing is sent until it is iterated. If the backend fails or the caller stops early, the user
        turn is removed again.
        """
        self.history.append({"role": "user", "content": text})
        parts: list[str] = []
        done = False
        deltas = self.backend.stream(self.messages, self.temperature, self.max_tokens)
        try:
            for delta in deltas:
                parts.append(delta)
                yield delta
            done = True
        finally:
            if hasattr(deltas, "close"):
                deltas.close()  # ends the backend's request now, not when the generator is collected
            if done:
                self.history.append({"role": "assistant", "content": "".join(parts)})
            else:
                self.history.pop()

    def ask(self, text: str) -> str:
        """`send` and wait for the whole reply."""
        return "".join(self.send(text))

    def reset(self) -> None:
        self.history.clear()

    def set_system(self, text: str | None) -> None:
        self.system = (text or "").strip() or None


def _lines(stdin: TextIO, interactive: bool) -> Iterator[str]:
    while True:
        if interactive:
            try:
                line = input(">>> ")
            except (EOFError, KeyboardInterrupt):
                return
        else:
            line = stdin.readline()
            if not line:
                return
        yield line.rstrip("\r\n")


def run_repl(session: ChatSession, stdin: TextIO, stdout: TextIO, interactive: bool = False) -> int:
    """Read lines until `/exit` or end of input; print each reply as it streams, then a newline.

    Command acknowledgements go to `stdout` in parentheses; errors of a turn go to stderr and the chat goes on.
    """
    for line in _lines(stdin, interactive):
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            cmd, _, rest = text.partition(" ")
            if cmd in ("/exit", "/quit"):
                break
            if cmd == "/reset":
                session.reset()
                print("(history cleared)", file=stdout)
            elif cmd == "/system":
                session.set_system(rest)
                print("(system prompt set)" if session.system else "(system prompt cleared)", file=stdout)
            elif cmd == "/help":
                print(HELP, file=stdout)
            else:
                print(f"(unknown command {cmd}; {HELP})", file=stdout)
            continue
        try:
            for delta in session.send(text):
                stdout.write(delta)
                stdout.flush()
            stdout.write("\n")
        except KeyboardInterrupt:
            stdout.write("\n(interrupted)\n")
        except Exception as e:  # a failed turn (context full, server error) should not end the chat
            stdout.write("\n")
            print(f"error: {e}", file=sys.stderr)
        stdout.flush()
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `shusheng-deploy chat URL_OR_PATH` (the positional included; engine options for local runs)."""
    p.add_argument("target", metavar="URL_OR_PATH", help="an http(s) server URL or a checkpoint folder")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=None, help="most tokens per reply (default: no limit)")
    p.add_argument("--model", default=None, help="server model name (default: the first of GET /v1/models)")
    p.add_argument("--api-key", default=None, help="server bearer token (default: $OPENAI_API_KEY)")
    g = p.add_argument_group("local checkpoint")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument("--tp", type=int, default=1, metavar="N", help="tensor-parallel degree (local GPUs)")


def make_backend(args: argparse.Namespace) -> Backend:
    """`ServerBackend` for an http(s) URL, else `EngineBackend` for a checkpoint folder.

    Raises:
        ValueError: the target is neither, or the server cannot be used.
    """
    target = args.target
    if target.startswith(("http://", "https://")):
        return ServerBackend(target, model=args.model, api_key=args.api_key)
    if not os.path.isdir(target):
        raise ValueError(f"{target!r} is neither an http(s) URL nor a checkpoint folder")
    options = {"device": getattr(args, "device", "auto"), "dtype": getattr(args, "dtype", "auto"),
               "max_model_len": getattr(args, "max_model_len", None), "tensor_parallel_size": getattr(args, "tp", 1)}
    return EngineBackend(target, **options)


def main_from_args(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Run `chat` from parsed arguments, reading `stdin` (default sys.stdin) and writing `stdout`.

    Returns:
        0 at `/exit` or end of input; 2 on bad input (one line on stderr).
    """
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    try:
        if args.temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
        if args.max_tokens is not None and args.max_tokens < 1:
            raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
        session = ChatSession(make_backend(args), args.system, args.temperature, args.max_tokens)
    except (ValueError, FileNotFoundError) as e:
        print(f"shusheng-deploy: error: {e}", file=sys.stderr)
        return 2
    interactive = stdin is sys.stdin and stdout is sys.stdout and stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        print(f"chatting with {args.target}; {HELP}", file=stdout)
    return run_repl(session, stdin, stdout, interactive)
