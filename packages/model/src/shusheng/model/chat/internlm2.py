"""InternLM2 chat format: ChatML with bos, an ``environment`` role, and native plugin / code-interpreter calls.

Reference: InternLM's ``chat/chat_format.md`` (github.com/InternLM/InternLM) and Lagent's ``Internlm2Protocol``.
A full tool round trip renders as::

    <s><|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>system name=<|plugin|>
    [JSON list of function dicts, indent=4]<|im_end|>
    <|im_start|>user
    What's the weather in Shanghai?<|im_end|>
    <|im_start|>assistant
    Let me check.<|action_start|><|plugin|>
    {"name": "get_weather", "parameters": {"city": "Shanghai"}}<|action_end|><|im_end|>
    <|im_start|>environment name=<|plugin|>
    {"temperature": 22}<|im_end|>
    <|im_start|>assistant
    It is 22 degrees.<|im_end|>

Newlines: ``<|action_start|><|plugin|>`` is followed by ``\\n`` and the call JSON, and ``<|action_end|>`` is
directly followed by ``<|im_end|>``, as in chat_format.md's function-call example and xtuner's InternLM2 agent
template. (chat_format.md's interpreter example and Lagent put a ``\\n`` after ``<|action_end|>``; we use one rule
for both kinds.) Code runs as ``<|action_start|><|interpreter|>\\n```python\\nCODE\\n```<|action_end|>``; an
OpenAI call to a function named ``python`` or ``interpreter`` with ``{"code": ...}`` maps to it, and parses back
to a call named ``python``.
"""

from __future__ import annotations

import json
import re

from shusheng.model.chat.messages import Message, ParsedMessage, ToolCall, openai_tool_call
from shusheng.model.chat.templates import Segment, Template, call_arguments

PLUGIN, INTERPRETER = "<|plugin|>", "<|interpreter|>"
ACTION_START, ACTION_END, IM_END = "<|action_start|>", "<|action_end|>", "<|im_end|>"
INTERPRETER_NAMES = ("python", "interpreter")
NAME_TOKENS = {"plugin": PLUGIN, "interpreter": INTERPRETER}  # native `name` values -> their tokens
INTERPRETER_PROMPT = (
    "You now have access to a Jupyter notebook environment supporting Python code execution. "
    "Send code to python to run it in this stateful environment."
)
_ACTION = re.compile(re.escape(ACTION_START) + f"({re.escape(PLUGIN)}|{re.escape(INTERPRETER)})(.*?)"
                     + f"(?:{re.escape(ACTION_END)}|$)", re.DOTALL)
_CODE_BLOCK = re.compile(r"^```[\w+-]*\n(.*?)\n?```$", re.DOTALL)


class InternLM2Template(Template):
    """InternLM2-Chat: ``<s>`` then ``<|im_start|>ROLE\\nCONTENT<|im_end|>\\n`` per message, native tool protocol."""

    name = "internlm2"
    roles = ("system", "user", "assistant", "tool", "environment")
    bos_token = "<s>"
    end_of_turn = IM_END

    def segments(self, messages: list[Message], tools: list[dict], add_generation_prompt: bool) -> list[Segment]:
        turns: list[list[Segment]] = []
        kinds: dict[str, str] = {}  # tool_call_id -> "plugin" | "interpreter", to address the tool results
        last_kind = "plugin"
        for m in messages:
            if m.role == "assistant":
                actions = ""
                for call in m.tool_calls:
                    last_kind = "interpreter" if _is_code(call) else "plugin"
                    kinds[call.id or ""] = last_kind
                    actions += _action(call)
                body = Segment(m.content + actions + IM_END, trainable=True)
                turns.append([Segment("<|im_start|>assistant\n"), body, Segment("\n")])
            elif m.role == "tool":
                kind = kinds.get(m.tool_call_id or "") or ("interpreter" if m.name in INTERPRETER_NAMES else last_kind)
                turns.append([_turn("environment", NAME_TOKENS[kind], m.content)])
            else:  # system, user, environment; a native `name` (plugin, interpreter, file, ...) goes in the header
                turns.append([_turn(m.role, NAME_TOKENS.get(m.name, m.name), m.content)])
        # Tool declarations go right after the leading system prompt (or first), as in chat_format.md.
        at = 1 if messages and messages[0].role == "system" else 0
        turns.insert(at, _declarations(tools))
        segs = [seg for turn in turns for seg in turn]
        if add_generation_prompt:
            segs.append(Segment("<|im_start|>assistant\n"))
        return segs

    def parse(self, text: str) -> ParsedMessage:
        text = text.split(IM_END, 1)[0].split("</s>", 1)[0]
        parts, calls, pos = [], [], 0
        for match in _ACTION.finditer(text):
            kind, body = match.group(1), match.group(2)
            if kind == PLUGIN:
                try:
                    obj = json.loads(body)
                except json.JSONDecodeError:
                    obj = None
                args = call_arguments(obj)
                call = None if args is None else (obj["name"], args)
            else:
                code = body.strip()
                block = _CODE_BLOCK.match(code)
                call = ("python", {"code": block.group(1) if block else code})
            if call is None:  # malformed: leave the raw action in the content
                continue
            parts.append(text[pos : match.start()])
            calls.append(openai_tool_call(len(calls), *call))
            pos = match.end()
        parts.append(text[pos:])
        return ParsedMessage("".join(parts).strip(), calls)


def _turn(role: str, name: str | None, content: str) -> Segment:
    header = f"<|im_start|>{role} name={name}\n" if name else f"<|im_start|>{role}\n"
    return Segment(header + content + IM_END + "\n")


def _declarations(tools: list[dict]) -> list[Segment]:
    segs = []
    code_tools = [t for t in tools if t["name"] in INTERPRETER_NAMES]
    plugins = [t for t in tools if t["name"] not in INTERPRETER_NAMES]
    if code_tools:
        segs.append(_turn("system", INTERPRETER, code_tools[0].get("description") or INTERPRETER_PROMPT))
    if plugins:
        segs.append(_turn("system", PLUGIN, json.dumps(plugins, ensure_ascii=False, indent=4)))
    return segs


def _is_code(call: ToolCall) -> bool:
    return call.name in INTERPRETER_NAMES and isinstance(call.arguments.get("code"), str)


def _action(call: ToolCall) -> str:
    if _is_code(call):
        return f"{ACTION_START}{INTERPRETER}\n```python\n{call.arguments['code']}\n```{ACTION_END}"
    payload = json.dumps({"name": call.name, "parameters": call.arguments}, ensure_ascii=False)
    return f"{ACTION_START}{PLUGIN}\n{payload}{ACTION_END}"
