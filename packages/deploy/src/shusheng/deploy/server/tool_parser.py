"""Tool calls in streamed chat output, as OpenAI `tool_calls` deltas.

InternLM2 marks a call with `<|action_start|><|plugin|>` ... `<|action_end|>` (or `<|interpreter|>` for code):
text before the marker streams as content at once (holding back only a tail that could be the start of the marker);
from the marker on, the text is buffered until the action ends, then `shusheng.model.chat.parse` turns it into a
call. Templates whose calls are plain JSON in the text (Llama-3, ChatML) buffer the whole reply when tools were
offered and parse it at the end. Either way the parse is the same function the non-streaming path uses.
"""

from __future__ import annotations

from shusheng.model.chat import get_template, parse

ACTION_START, ACTION_END = "<|action_start|>", "<|action_end|>"


class ToolStreamParser:
    def __init__(self, template: str):
        self.template = get_template(template).name
        self.native = self.template == "internlm2"
        self.buffer = ""  # text not yet released
        self.num_calls = 0

    def feed(self, delta: str) -> tuple[str, list[dict]]:
        """New text -> (content to stream now, finished tool calls as OpenAI deltas)."""
        self.buffer += delta
        if not self.native:
            return "", []
        content, calls = "", []
        while True:
            start = self.buffer.find(ACTION_START)
            if start < 0:
                keep = _partial_suffix(self.buffer, ACTION_START)
                content += self.buffer[: len(self.buffer) - keep]
                self.buffer = self.buffer[len(self.buffer) - keep :]
                return content, calls
            content += self.buffer[:start]
            end = self.buffer.find(ACTION_END, start)
            if end < 0:
                self.buffer = self.buffer[start:]
                return content, calls
            action = self.buffer[start : end + len(ACTION_END)]
            self.buffer = self.buffer[end + len(ACTION_END) :]
            parsed = parse(self.template, action)
            content += parsed.content
            calls += self._deltas(parsed.tool_calls)

    def finish(self) -> tuple[str, list[dict]]:
        """End of the reply: whatever is buffered, parsed (an unfinished action block is parsed as it stands)."""
        parsed = parse(self.template, self.buffer)
        self.buffer = ""
        return parsed.content, self._deltas(parsed.tool_calls)

    def _deltas(self, calls: list[dict]) -> list[dict]:
        out = []
        for c in calls:
            out.append({"index": self.num_calls, "id": f"call_{self.num_calls}", "type": "function",
                        "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}})
            self.num_calls += 1
        return out


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
