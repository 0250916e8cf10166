"""Record formats, detected from their keys, normalized to three kinds of example.

- `preference`: `prompt` (text or messages) or `messages`, then `chosen` and `rejected` (text, a message or messages);
  optional `system`, `domain`, `tools`. Becomes a `Preference`.
- `messages` (OpenAI): `messages` (roles system/user/assistant/tool, assistant `tool_calls`), optional `tools`.
  Becomes a `Conversation`.
- `sharegpt`: `conversations` of `{from, value}` (human, gpt, system, function_call, observation), optional `system`,
  `tools`. Becomes a `Conversation`.
- `alpaca`: `instruction`, `output`, optional `input`, `system`, `history` ([[question, answer], ...]). Becomes a
  `Conversation`.
- `text`: `text` (incremental pre-training: every token is trained). Becomes a `Text`.

A file has one format, detected from its first record; every record is then checked against it, and a record that
does not fit raises a `DataError` naming the file, the record and the keys it has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

FORMATS = ("preference", "messages", "sharegpt", "alpaca", "text")
_EXPECTED = ("preference (prompt or messages, chosen, rejected), messages (OpenAI), sharegpt (conversations), "
             "alpaca (instruction, output), text")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "system": "system", "function_call": "assistant",
                   "observation": "tool", "tool": "tool", "function": "tool"}


class DataError(ValueError):
    """A data file or record that cannot be used; the message names the file and the record."""


@dataclass
class Conversation:
    """OpenAI-style messages (and tools) for SFT."""

    messages: list[dict]
    tools: list[dict] | None = None


@dataclass
class Text:
    """Raw text for incremental pre-training."""

    text: str


@dataclass
class Preference:
    """A prompt conversation with a preferred and a dispreferred assistant reply (each a list of messages)."""

    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]
    tools: list[dict] | None = None
    domain: str | None = None  # picks the reward model's condition system prompt


Example = Conversation | Text | Preference


@dataclass
class Records:
    """The examples of one source, with their format and where each came from (for error messages)."""

    name: str
    format: str
    examples: list[Example] = field(default_factory=list)

    def where(self, i: int) -> str:
        return f"{self.name} record {i}"


def detect_format(record: dict) -> str | None:
    """The format a record's keys fit, or None."""
    if not isinstance(record, dict):
        return None
    if "chosen" in record and "rejected" in record and ("prompt" in record or "messages" in record):
        return "preference"
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "text" in record:
        return "text"
    return None


def parse_records(records: list[dict], name: str) -> Records:
    """Detects the format from the first record and converts all of them.

    Raises:
        DataError: no records, a first record fitting no format, or a record that does not fit the file's format.
    """
    if not records:
        raise DataError(f"{name}: no records")
    fmt = detect_format(records[0])
    if fmt is None:
        raise DataError(f"{name} record 0 fits no known format (keys: {_keys(records[0])}); expected {_EXPECTED}")
    out = Records(name, fmt)
    for i, record in enumerate(records):
        where = out.where(i)
        if detect_format(record) != fmt:
            raise DataError(f"{where} does not fit the file's {fmt} format (keys: {_keys(record)})")
        try:
            out.examples.append(_CONVERTERS[fmt](record))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{where} ({fmt}): {e}") from None
    return out


def _keys(record) -> list[str] | str:
    return sorted(record) if isinstance(record, dict) else type(record).__name__


def _text(value, key: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {type(value).__name__}")
    return value


def _clean(message: dict) -> dict:
    # Columnar files (parquet, hub datasets) fill absent struct fields with None; drop them.
    return {k: v for k, v in message.items() if v is not None}


def _tools(value) -> list[dict] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):  # ShareGPT files store tools as a JSON string
        value = json.loads(value)
    if not isinstance(value, list):
        raise ValueError(f"tools must be a list, got {type(value).__name__}")
    return value


def _messages(value, key: str) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise ValueError(f"{key} must be a list of message dicts")
    return [_clean(m) for m in value]


def _with_system(messages: list[dict], system) -> list[dict]:
    if system:
        return [{"role": "system", "content": _text(system, "system")}, *messages]
    return messages


def _from_messages(r: dict) -> Conversation:
    return Conversation(_messages(r["messages"], "messages"), _tools(r.get("tools")))


def _from_alpaca(r: dict) -> Conversation:
    prompt = _text(r["instruction"], "instruction")
    if r.get("input"):
        prompt = f"{prompt}\n\n{_text(r['input'], 'input')}"
    messages = []
    for j, turn in enumerate(r.get("history") or []):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
            raise ValueError(f"history[{j}] must be a [question, answer] pair")
        messages += [{"role": "user", "content": _text(turn[0], f"history[{j}][0]")},
                     {"role": "assistant", "content": _text(turn[1], f"history[{j}][1]")}]
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(r["output"], "output")}]
    return Conversation(_with_system(messages, r.get("system")))


def _from_sharegpt(r: dict) -> Conversation:
    turns = r["conversations"]
    if not isinstance(turns, list):
        raise ValueError("conversations must be a list of {from, value}")
    messages, calls = [], 0
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in _SHAREGPT_ROLES:
            got = turn.get("from") if isinstance(turn, dict) else turn
            raise ValueError(f"conversations[{j}].from: {got!r} is not one of {sorted(_SHAREGPT_ROLES)}")
        value = _text(turn.get("value"), f"conversations[{j}].value")
        if turn["from"] == "function_call":  # the value is the call as JSON: {"name", "arguments"}
            call = json.loads(value)
            call = {"id": f"call_{calls}", "type": "function",
                    "function": {"name": call["name"], "arguments": call.get("arguments", call.get("parameters", {}))}}
            calls += 1
            if messages and messages[-1]["role"] == "assistant" and not messages[-1].get("tool_calls"):
                messages[-1]["tool_calls"] = [call]  # text then a call: one assistant turn
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif turn["from"] in ("observation", "tool", "function"):
            messages.append({"role": "tool", "content": value, "tool_call_id": f"call_{calls - 1}"})
        else:
            messages.append({"role": _SHAREGPT_ROLES[turn["from"]], "content": value})
    return Conversation(_with_system(messages, r.get("system")), _tools(r.get("tools")))


def _reply(value, key: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        return [_clean(value)]
    messages = _messages(value, key)
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError(f"{key} must end with an assistant message")
    return messages


def _from_preference(r: dict) -> Preference:
    if "prompt" in r and not isinstance(r["prompt"], str):
        prompt = _messages(r["prompt"], "prompt")
    elif "prompt" in r:
        prompt = [{"role": "user", "content": r["prompt"]}]
    else:
        prompt = _messages(r["messages"], "messages")
    domain = r.get("domain")
    if domain is not None and not isinstance(domain, str):
        raise ValueError(f"domain must be a string, got {type(domain).__name__}")
    return Preference(_with_system(prompt, r.get("system")), _reply(r["chosen"], "chosen"),
                      _reply(r["rejected"], "rejected"), _tools(r.get("tools")), domain)


def _from_text(r: dict) -> Text:
    return Text(_text(r["text"], "text"))


_CONVERTERS = {"messages": _from_messages, "alpaca": _from_alpaca, "sharegpt": _from_sharegpt,
               "preference": _from_preference, "text": _from_text}
