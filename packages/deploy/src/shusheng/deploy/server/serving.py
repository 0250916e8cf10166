"""Chat and text completions: OpenAI request -> engine requests -> OpenAI responses or SSE chunks."""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from shusheng.model.chat import parse, render

from ..async_engine import AsyncEngine, RequestStream
from ..outputs import RequestOutput
from ..sampling_params import SamplingParams
from .metrics import Metrics
from .protocol import ChatCompletionRequest, CompletionRequest
from .sse import Chunks, sse
from .tool_parser import ToolStreamParser


class APIError(Exception):
    """An error with an HTTP status and OpenAI's error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}


@dataclass
class ServerState:
    engine: AsyncEngine
    model_name: str
    chat_template: str | None
    metrics: Metrics
    max_queue: int = 1024


def sampling_params(req, max_tokens: int | None, **kw) -> SamplingParams:
    try:
        return SamplingParams(
            n=req.n, temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, top_k=max(req.top_k or 0, 0),
            min_p=req.min_p or 0.0, repetition_penalty=req.repetition_penalty,
            presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty, seed=req.seed,
            max_tokens=max_tokens, min_tokens=req.min_tokens, stop=req.stop or [],
            stop_token_ids=req.stop_token_ids or [], ignore_eos=req.ignore_eos, **kw,
        )
    except ValueError as e:
        raise APIError(400, str(e)) from None


# request ids: this server's random prefix and a counter (uuid4 reads the OS's entropy source for every request:
# 80 us per call on a small VM, more than the rest of starting a request but the tokenizer)
_ID_PREFIX = secrets.token_hex(8)
_ids = itertools.count()


def _request_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):016x}"


def start(state: ServerState, prompt, params: SamplingParams) -> RequestStream:
    if state.engine.num_unfinished >= state.max_queue:
        raise APIError(503, f"the server is at capacity ({state.max_queue} requests in flight); retry later",
                       type="server_overloaded")
    try:
        return state.engine.add_request(prompt, params, request_id=_request_id())
    except ValueError as e:
        raise APIError(400, str(e)) from None


async def outputs(state: ServerState, stream: RequestStream) -> AsyncIterator[RequestOutput]:
    """A request's outputs; aborts it (freeing its blocks) if the consumer goes away before it finishes."""
    finished = False
    t0, last = time.monotonic(), None
    try:
        async for out in stream:
            now = time.monotonic()
            if any(c.delta_token_ids for c in out.outputs):
                if last is None:
                    state.metrics.ttft.observe(now - t0)
                else:
                    state.metrics.itl.observe(now - last)
                last = now
            finished = out.finished
            yield out
    finally:
        if not finished:
            state.engine.abort(stream.request_id)
        else:
            state.metrics.e2e.observe(time.monotonic() - t0)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}



def _count(state: ServerState, out: RequestOutput | None) -> None:
    if out is None:  # the stream ended without any output (the engine failed; the error reached the client)
        return
    state.metrics.prompt_tokens.inc(len(out.prompt_token_ids))
    state.metrics.generation_tokens.inc(sum(len(c.token_ids) for c in out.outputs))


# ---- chat ----


@dataclass
class ChatPlan:
    prompt: str
    params: SamplingParams
    tools: list[dict] | None
    prefix: str  # text forced at the start of the reply (a named tool_choice)
    logprobs: bool


def plan_chat(state: ServerState, req: ChatCompletionRequest) -> ChatPlan:
    if state.chat_template is None:
        raise APIError(400, "this model has no chat template; use /v1/completions or start the server with "
                            "--chat-template")
    fmt = (req.response_format or {}).get("type", "text")
    if fmt != "text":
        raise APIError(400, f"response_format {fmt!r} is not supported (no constrained decoding yet); omit it or "
                            "use {'type': 'text'}", param="response_format")
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    for m in messages:
        m["role"] = "system" if m["role"] == "developer" else m["role"]
    tools, prefix = req.tools, ""
    choice = req.tool_choice
    if choice == "none":
        tools = None
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        tools = [t for t in tools or [] if (t.get("function") or t).get("name") == name]
        if not tools:
            raise APIError(400, f"tool_choice names {name!r}, which is not among the request's tools",
                           param="tool_choice")
        if state.chat_template == "internlm2":  # force the call: the reply starts inside the action block
            prefix = '<|action_start|><|plugin|>\n{"name": ' + json.dumps(name) + ', "parameters": '
    try:
        prompt = render(state.chat_template, messages, tools=tools, add_generation_prompt=req.add_generation_prompt)
    except ValueError as e:
        raise APIError(400, str(e), param="messages") from None
    max_tokens = req.max_completion_tokens or req.max_tokens
    if max_tokens == 0:
        raise APIError(400, "max_tokens must be at least 1 for chat completions", param="max_tokens")
    k = req.top_logprobs or 0
    params = sampling_params(req, max_tokens, logprobs=k if req.logprobs else None,
                             skip_special_tokens=not (tools and state.chat_template == "internlm2"))
    return ChatPlan(prompt + prefix, params, tools, prefix, req.logprobs)


def _chat_logprobs(tokenizer, entries: list[dict]) -> dict:
    def tok(i):
        s = tokenizer.decode([i])
        return {"token": s, "bytes": list(s.encode("utf-8"))}

    return {"content": [{**tok(e["token_id"]), "logprob": e["logprob"],
                         "top_logprobs": [{**tok(i), "logprob": lp} for i, lp in e["top"]]} for e in entries]}


def _chat_message(state: ServerState, plan: ChatPlan, text: str, finish: str | None) -> tuple[dict, str | None]:
    if not plan.tools:
        return {"role": "assistant", "content": text}, finish
    parsed = parse(state.chat_template, plan.prefix + text)
    message = {"role": "assistant", "content": parsed.content or None}
    if parsed.tool_calls:
        message["tool_calls"] = parsed.tool_calls
        finish = "tool_calls"
    return message, finish


async def chat_completion(state: ServerState, req: ChatCompletionRequest) -> dict:
    plan = plan_chat(state, req)
    stream = start(state, plan.prompt, plan.params)
    final = None
    async for out in outputs(state, stream):
        final = out
    _count(state, final)
    tokenizer = state.engine.engine.tokenizer
    choices = []
    for c in final.outputs:
        message, finish = _chat_message(state, plan, c.text, c.finish_reason)
        choices.append({"index": c.index, "message": message, "finish_reason": finish,
                        "logprobs": _chat_logprobs(tokenizer, c.logprobs) if plan.logprobs else None})
    return {"id": f"chatcmpl-{stream.request_id}", "object": "chat.completion", "created": int(time.time()),
            "model": state.model_name, "choices": choices,
            "usage": _usage(len(final.prompt_token_ids), sum(len(c.token_ids) for c in final.outputs))}


def chat_stream(state: ServerState, req: ChatCompletionRequest) -> AsyncIterator[str]:
    plan = plan_chat(state, req)
    stream = start(state, plan.prompt, plan.params)  # errors surface before the response starts
    rid, created = f"chatcmpl-{stream.request_id}", int(time.time())
    tokenizer = state.engine.engine.tokenizer
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    chunks = Chunks(rid, "chat.completion.chunk", created, state.model_name)

    def chunk(index, delta, finish=None, logprobs=None):
        if logprobs is None and delta.keys() <= {"content"}:  # the common chunk: made without json.dumps
            return chunks.content(index, delta.get("content", ""), finish)
        return sse({**chunks.fields,
                    "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})

    async def gen():
        parsers = {i: ToolStreamParser(state.chat_template) for i in range(req.n)} if plan.tools else {}
        for i in range(req.n):
            yield chunk(i, {"role": "assistant", "content": ""})
        if plan.prefix:
            for p in parsers.values():
                p.feed(plan.prefix)
        final = None
        async for out in outputs(state, stream):
            final = out
            for c in out.outputs:
                if not c.delta_text and not c.finished and not c.delta_token_ids:
                    continue
                content, calls = parsers[c.index].feed(c.delta_text) if plan.tools else (c.delta_text, [])
                finish = c.finish_reason
                if finish is not None and plan.tools:
                    rest, more = parsers[c.index].finish()
                    content, calls = content + rest, calls + more
                    finish = "tool_calls" if parsers[c.index].num_calls else finish
                delta = {}
                if content:
                    delta["content"] = content
                if calls:
                    delta["tool_calls"] = calls
                lp = None
                if plan.logprobs and c.logprobs and c.delta_token_ids:
                    end = len(c.token_ids)  # a snapshot; the engine may have appended to c.logprobs since
                    lp = _chat_logprobs(tokenizer, c.logprobs[end - len(c.delta_token_ids) : end])
                if delta or finish or lp:
                    yield chunk(c.index, delta, finish, lp)
        _count(state, final)
        if include_usage:
            yield sse({**chunks.fields, "choices": [], "usage": _usage(len(final.prompt_token_ids),
                                                                       sum(len(c.token_ids) for c in final.outputs))})
        yield "data: [DONE]\n\n"

    return gen()


# ---- completions ----


def _prompts(req: CompletionRequest) -> list:
    p = req.prompt
    if isinstance(p, str) or (p and isinstance(p[0], int)):
        return [p]
    if not p:
        raise APIError(400, "prompt is empty", param="prompt")
    return list(p)


def plan_completion(req: CompletionRequest) -> tuple[list, SamplingParams, bool]:
    if req.suffix:
        raise APIError(400, "suffix (fill-in-the-middle) is not supported; omit it", param="suffix")
    prompts = _prompts(req)
    zero = req.max_tokens == 0
    if zero and not req.echo:
        raise APIError(400, "max_tokens 0 is only meaningful with echo (prompt log-probabilities)", param="max_tokens")
    # max_tokens 0 + echo: score the prompt; one token is generated and dropped
    params = sampling_params(req, 1 if zero else (req.max_tokens if req.max_tokens is not None else 16),
                             logprobs=req.logprobs,
                             prompt_logprobs=req.logprobs if (req.echo and req.logprobs is not None) else None)
    return prompts, params, zero


def _completion_logprobs(tokenizer, entries: list[dict | None], offset0: int) -> dict:
    tokens, lps, tops, offsets, off = [], [], [], [], offset0
    for e in entries:
        if e is None:  # the first prompt token has no context
            continue
        s = tokenizer.decode([e["token_id"]])
        tokens.append(s)
        lps.append(e["logprob"])
        tops.append({tokenizer.decode([i]): lp for i, lp in e["top"]} if e["top"] else None)
        offsets.append(off)
        off += len(s)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def _completion_choice(tokenizer, req, out: RequestOutput, c, index: int, zero: bool) -> dict:
    prompt_text = out.prompt if out.prompt is not None else tokenizer.decode(out.prompt_token_ids)
    text = "" if zero else c.text
    logprobs = None
    if req.logprobs is not None:
        entries = []
        if req.echo:
            first = {"token_id": out.prompt_token_ids[0], "logprob": None, "top": []}
            entries = [first] + [e for e in (out.prompt_logprobs or [])[1:]]
        if not zero:
            entries += c.logprobs or []
        logprobs = _completion_logprobs(tokenizer, entries, 0)
        if req.echo:  # the first prompt token is listed with a null log-probability, as OpenAI does
            logprobs["token_logprobs"][0] = None
    return {"index": index, "text": (prompt_text if req.echo else "") + text, "logprobs": logprobs,
            "finish_reason": "length" if zero else c.finish_reason}


async def completion(state: ServerState, req: CompletionRequest) -> dict:
    prompts, params, zero = plan_completion(req)
    streams = [start(state, p, params) for p in prompts]
    tokenizer = state.engine.engine.tokenizer
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for i, stream in enumerate(streams):
        final = None
        async for out in outputs(state, stream):
            final = out
        _count(state, final)
        prompt_tokens += len(final.prompt_token_ids)
        completion_tokens += 0 if zero else sum(len(c.token_ids) for c in final.outputs)
        for c in final.outputs:
            choices.append(_completion_choice(tokenizer, req, final, c, i * req.n + c.index, zero))
    return {"id": f"cmpl-{streams[0].request_id}", "object": "text_completion", "created": int(time.time()),
            "model": state.model_name, "choices": choices, "usage": _usage(prompt_tokens, completion_tokens)}


def completion_stream(state: ServerState, req: CompletionRequest) -> AsyncIterator[str]:
    import asyncio

    prompts, params, zero = plan_completion(req)
    streams = [start(state, p, params) for p in prompts]
    rid, created = f"cmpl-{streams[0].request_id}", int(time.time())
    tokenizer = state.engine.engine.tokenizer
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    chunks = Chunks(rid, "text_completion", created, state.model_name)

    async def merged():
        """(prompt index, output) of every prompt's stream as they come (several prompts: a task each)."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i, stream):
            try:
                async for out in outputs(state, stream):
                    await queue.put((i, out))
            finally:
                await queue.put((i, None))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
        try:
            done = 0
            while done < len(tasks):
                i, out = await queue.get()
                if out is None:
                    done += 1
                else:
                    yield i, out
        finally:
            for t in tasks:
                t.cancel()

    def render(i: int, out: RequestOutput, usage: list[int]) -> list[str]:
        sent = []
        for c in out.outputs:
            text = c.delta_text
            if req.echo and len(c.token_ids) == len(c.delta_token_ids) and c.delta_token_ids:
                text = (out.prompt if out.prompt is not None else tokenizer.decode(out.prompt_token_ids)) + (
                    "" if zero else text)
            elif zero:
                text = ""
            if text or c.finished:
                sent.append(chunks.text(i * req.n + c.index, text, "length" if zero else c.finish_reason))
        if out.finished:
            _count(state, out)
            usage[0] += len(out.prompt_token_ids)
            usage[1] += 0 if zero else sum(len(c.token_ids) for c in out.outputs)
        return sent

    async def gen():
        usage = [0, 0]
        if len(streams) == 1:  # one prompt: its outputs straight from its stream (no fan-in layer per chunk)
            async for out in outputs(state, streams[0]):
                for s in render(0, out, usage):
                    yield s
        else:
            async for i, out in merged():
                for s in render(i, out, usage):
                    yield s
        if include_usage:
            yield sse({**chunks.fields, "choices": [], "usage": _usage(*usage)})
        yield "data: [DONE]\n\n"

    return gen()
