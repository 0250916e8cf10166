"""The OpenAI-compatible HTTP server: FastAPI routes over an `AsyncEngine` running in its own thread.

Endpoints: /v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings, /tokenize, /health, /metrics.
Errors use OpenAI's JSON shape: 400 bad parameters or an over-long prompt, 401 missing or wrong API key, 404
unknown model, 503 queue full. A client that disconnects has its request aborted and its KV blocks freed.
"""

from __future__ import annotations

import base64
import hmac
import time
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from shusheng.model.chat import render

from ..async_engine import AsyncEngine
from .metrics import Metrics
from .protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, TokenizeRequest
from .serving import APIError, ServerState, chat_completion, chat_stream, completion, completion_stream

_OPEN_PATHS = ("/health", "/metrics")


def _embed(engine, inputs):
    """Runs where the engine lives (its thread or its process): a module-level function, so it pickles."""
    return engine.embed(inputs).cpu()


class _AuthAndCount:
    """API-key check and per-path request counting, as plain ASGI middleware: it sees each streamed chunk pass
    straight through (Starlette's `@app.middleware("http")` would copy every chunk through an extra task)."""

    def __init__(self, app, state: ServerState, keys: list[str]):
        self.app, self.state, self.keys = app, state, keys

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, requests = scope["path"], self.state.metrics.requests
        if self.keys and path not in _OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not any(hmac.compare_digest(token, k) for k in self.keys):
                requests.labels(path, "401").inc()
                msg = "missing API key: send 'Authorization: Bearer <key>'" if not token else "invalid API key"
                response = JSONResponse(APIError(401, msg, type="authentication_error").body(), status_code=401)
                return await response(scope, receive, send)
        status = ["500"]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            if path != "/metrics":
                requests.labels(path, status[0]).inc()


def build_app(engine: AsyncEngine, model_name: str, api_keys: list[str] | None = None,
              chat_template: str | None = None, max_queue: int = 1024) -> FastAPI:
    """The FastAPI app. `engine` is already running; the app shuts it down when it stops."""
    template = chat_template or engine.engine.tokenizer.chat_template
    state = ServerState(engine, model_name, template, Metrics(engine.engine.stats), max_queue)
    keys = [k for k in (api_keys or []) if k]

    @asynccontextmanager
    async def lifespan(app):
        yield
        engine.shutdown()

    app = FastAPI(title="shusheng-deploy", lifespan=lifespan)
    app.state.shusheng = state

    app.add_middleware(_AuthAndCount, state=state, keys=keys)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            msg = f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
        elif not where:
            msg = "the request body must be a JSON object (sent with Content-Type: application/json)"
        else:
            msg = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in errors[:5])
        return JSONResponse(APIError(400, msg, param=where or None).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(APIError(exc.status_code, str(exc.detail), type="invalid_request_error").body(),
                            status_code=exc.status_code)

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {model_name!r}",
                           type="not_found_error", param="model")

    @app.get("/health")
    async def health():
        if engine.error is not None:
            return JSONResponse({"status": "error", "error": repr(engine.error)}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "shusheng", "max_model_len": engine.engine.max_model_len}]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest):
        check_model(req.model)
        if req.stream:
            return StreamingResponse(chat_stream(state, req), media_type="text/event-stream")
        return await chat_completion(state, req)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        check_model(req.model)
        if req.stream:
            return StreamingResponse(completion_stream(state, req), media_type="text/event-stream")
        return await completion(state, req)

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest):
        check_model(req.model)
        inputs = req.input
        if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        if not inputs:
            raise APIError(400, "input is empty", param="input")
        try:
            vectors = await engine.run(_embed, inputs)
        except ValueError as e:
            raise APIError(400, str(e), param="input") from None
        tok = engine.engine.tokenizer
        n = sum(len(tok.encode(x)) if isinstance(x, str) else len(x) for x in inputs)
        data = []
        for i, v in enumerate(vectors):
            emb = (base64.b64encode(v.to(torch.float32).numpy().tobytes()).decode()
                   if req.encoding_format == "base64" else v.tolist())
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {"object": "list", "data": data, "model": model_name, "usage": {"prompt_tokens": n, "total_tokens": n}}

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest):
        check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "give exactly one of prompt or messages")
        if req.messages is not None:
            if template is None:
                raise APIError(400, "this model has no chat template to render messages with")
            text = render(template, [m.model_dump(exclude_none=True) for m in req.messages],
                          add_generation_prompt=req.add_generation_prompt)
        else:
            text = req.prompt
        ids = engine.engine.encode_prompt(text)
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.engine.max_model_len}

    return app
