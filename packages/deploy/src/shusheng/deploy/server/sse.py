"""Server-sent events in OpenAI's chunk format, made cheaply.

A busy server writes one chunk per token per stream, and a whole `json.dumps` of each chunk's nested dict was most
of the Python it spent per chunk. Within one stream only the choice changes (id, object, created and model are
fixed), so `Chunks` encodes the fixed head once and per chunk only the choice's strings, byte for byte what
`sse(dict)` makes (json's default separators, non-ASCII kept).
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring as _str  # json.dumps of a str with ensure_ascii=False (C when available)


def sse(obj) -> str:
    """One SSE event carrying `obj` as JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _opt(s: str | None) -> str:
    return "null" if s is None else _str(s)


class Chunks:
    """The chunks of one stream: `object` is "text_completion" or "chat.completion.chunk"."""

    def __init__(self, rid: str, object: str, created: int, model: str):
        self.fields = {"id": rid, "object": object, "created": int(created), "model": model}  # for `sse` of others
        self._head = (f'data: {{"id": {_str(rid)}, "object": {_str(object)}, "created": {int(created)}, '
                      f'"model": {_str(model)}, "choices": [{{"index": ')

    def text(self, index: int, text: str, finish_reason: str | None) -> str:
        """A completions chunk: `sse` of {..., "choices": [{"index", "text", "logprobs": None, "finish_reason"}]}."""
        return (f'{self._head}{int(index)}, "text": {_str(text)}, "logprobs": null, '
                f'"finish_reason": {_opt(finish_reason)}}}]}}\n\n')

    def content(self, index: int, content: str, finish_reason: str | None) -> str:
        """A chat chunk whose delta is only `content` (none when empty), without log-probs."""
        delta = f'{{"content": {_str(content)}}}' if content else "{}"
        return (f'{self._head}{int(index)}, "delta": {delta}, "logprobs": null, '
                f'"finish_reason": {_opt(finish_reason)}}}]}}\n\n')
