"""OpenAI-style chat messages: validation into small dataclasses, and the parsed form of a model reply.

Input messages are dicts ``{"role", "content", ...}``; content is a string or a list of ``{"type": "text", "text"}``
parts; assistant messages may carry OpenAI ``tool_calls``; tool messages may carry ``tool_call_id``/``name``.
Errors name the offending message index and field, e.g. ``messages[2].tool_calls[0].function.name``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class ToolCall:
    """One function call made by the assistant; ``arguments`` is already decoded from JSON."""

    name: str
    arguments: dict
    id: str | None = None


@dataclass
class Message:
    """A validated message: content flattened to a string."""

    role: str
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    name: str | None = None
    tool_call_id: str | None = None


@dataclass
class ParsedMessage:
    """A model reply split into text and OpenAI-form tool calls.

    Attributes:
        content: The reply text with tool calls and the end-of-turn token removed (stripped).
        tool_calls: ``[{"id": "call_0", "type": "function", "function": {"name", "arguments": JSON string}}]``.
    """

    content: str
    tool_calls: list[dict] = field(default_factory=list)

    def to_message(self) -> dict:
        """The reply as an OpenAI assistant message, ready to append to the conversation."""
        message = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return message


def openai_tool_call(index: int, name: str, arguments: dict) -> dict:
    """OpenAI form of a parsed call, with a per-reply id ``call_<index>``."""
    args = json.dumps(arguments, ensure_ascii=False)
    return {"id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": args}}


def normalize_messages(messages: list[dict], roles: tuple[str, ...]) -> list[Message]:
    """Validates OpenAI-style message dicts.

    Args:
        messages: The conversation.
        roles: Roles the template accepts.

    Returns:
        One :class:`Message` per input message.

    Raises:
        ValueError: A message is malformed; the message names the index and field.
    """
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages: expected a list of dicts, got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ValueError(f"{where}: expected a dict, got {type(m).__name__}")
        role = m.get("role")
        if role not in roles:
            raise ValueError(f"{where}.role: {role!r} is not one of {list(roles)}")
        calls = _tool_calls(m.get("tool_calls"), where) if role == "assistant" else []
        if role != "assistant" and m.get("tool_calls"):
            raise ValueError(f"{where}.tool_calls: only assistant messages carry tool calls")
        if m.get("content") is None and not calls:
            raise ValueError(f"{where}.content: missing (only an assistant message with tool_calls may omit it)")
        for key in ("name", "tool_call_id"):
            if m.get(key) is not None and not isinstance(m[key], str):
                raise ValueError(f"{where}.{key}: expected a string, got {type(m[key]).__name__}")
        content = _content(m.get("content"), where)
        out.append(Message(role, content, calls, m.get("name"), m.get("tool_call_id")))
    return out


def normalize_tools(tools: list[dict] | None) -> list[dict]:
    """Function dicts ``{"name", "description", "parameters"}`` from OpenAI ``tools`` or plain function dicts.

    Raises:
        ValueError: A tool is malformed; the message names its index.
    """
    out = []
    for i, tool in enumerate(tools or []):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"tools[{i}]: expected {{'type': 'function', 'function': {{'name': ...}}}} or a "
                             f"function dict with a 'name'")
        out.append(fn)
    return out


def _content(content, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise ValueError(f"{where}.content: expected a string or a list of text parts, got {type(content).__name__}")
    texts = []
    for j, part in enumerate(content):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            raise ValueError(f"{where}.content[{j}]: expected {{'type': 'text', 'text': str}}, got {part!r}")
        texts.append(part["text"])
    return "".join(texts)


def _tool_calls(calls, where: str) -> list[ToolCall]:
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise ValueError(f"{where}.tool_calls: expected a list, got {type(calls).__name__}")
    out = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise ValueError(f"{at}.function: expected a dict with 'name' and 'arguments'")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"{at}.function.name: expected a non-empty string")
        args = fn.get("arguments") or {}
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError as err:
                raise ValueError(f"{at}.function.arguments: invalid JSON ({err})") from err
        if not isinstance(args, dict):
            raise ValueError(f"{at}.function.arguments: expected a JSON object, got {type(args).__name__}")
        out.append(ToolCall(fn["name"], args, call.get("id")))
    return out
