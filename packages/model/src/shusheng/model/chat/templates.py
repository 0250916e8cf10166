"""Chat templates: a small Template base, the ChatML and Llama-3 templates, a registry, render/render_ids/parse.

A template turns validated messages into a list of :class:`Segment` (text + trainable flag). ``render`` joins the
texts; ``render_ids`` tokenizes segment by segment for SFT, so assistant tokens can be masked in, and its ids
equal ``tokenizer.encode(render(...))``. ``parse`` splits a model reply into text and OpenAI tool calls.

ChatML and Llama-3 have no native tool-call syntax; the convention here (Llama 3.1's JSON tool calling) is that a
call is a JSON object ``{"name": ..., "parameters": {...}}`` written in the reply text, one per line, and that the
tools are declared as a JSON list in the system prompt. InternLM2's native protocol lives in ``internlm2.py``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from shusheng.model.chat.messages import Message, ParsedMessage, normalize_messages, normalize_tools, openai_tool_call
from shusheng.model.tokenizer import Tokenizer

TOOLS_PROMPT = (
    "You can call the functions below. To call one, reply with a JSON object "
    '{"name": <function name>, "parameters": <arguments object>}.\n'
)


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text; ``trainable`` marks text the model should learn to produce."""

    text: str
    trainable: bool = False


class Template:
    """A chat format. Subclasses implement ``segments`` and ``parse``.

    Attributes:
        name: Registry name.
        roles: Message roles the format accepts.
        bos_token: Text the rendering starts with (rendered as ``tokenizer.bos_id`` by ``render_ids``), or None.
        end_of_turn: The token that closes a turn; generation stops on it.
    """

    name: str = ""
    roles: tuple[str, ...] = ("system", "user", "assistant", "tool")
    bos_token: str | None = None
    end_of_turn: str = ""

    def segments(self, messages: list[Message], tools: list[dict], add_generation_prompt: bool) -> list[Segment]:
        """Renders validated messages (without the bos token) into segments."""
        raise NotImplementedError

    def parse(self, text: str) -> ParsedMessage:
        """Splits a model reply into content and tool calls; never raises on model output."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class HeaderTemplate(Template):
    """Formats where every turn is ``header(role) + content + end_of_turn + after_turn`` (ChatML, Llama-3)."""

    after_turn: str = ""
    role_names: dict[str, str] = {}  # role -> name written in the header
    strip_content: bool = False

    def header(self, role: str) -> str:
        raise NotImplementedError

    def segments(self, messages: list[Message], tools: list[dict], add_generation_prompt: bool) -> list[Segment]:
        messages = _with_tools_prompt(messages, tools)
        segs = []
        for m in messages:
            content = m.content.strip() if self.strip_content else m.content
            calls = "\n".join(json.dumps({"name": c.name, "parameters": c.arguments}, ensure_ascii=False)
                              for c in m.tool_calls)
            body = "\n".join(t for t in (content, calls) if t)
            header = Segment(self.header(self.role_names.get(m.role, m.role)))
            trainable = m.role == "assistant"
            segs += [header, Segment(body + self.end_of_turn, trainable), Segment(self.after_turn)]
        if add_generation_prompt:
            segs.append(Segment(self.header("assistant")))
        return segs

    def parse(self, text: str) -> ParsedMessage:
        text = _cut_at(text, (self.end_of_turn, "<|eom_id|>", "<|end_of_text|>", "</s>"))
        content, calls = find_json_calls(text)
        return ParsedMessage(content.strip(), calls)


class ChatMLTemplate(HeaderTemplate):
    """``<|im_start|>ROLE\\nCONTENT<|im_end|>\\n``, no bos."""

    name = "chatml"
    end_of_turn = "<|im_end|>"
    after_turn = "\n"

    def header(self, role: str) -> str:
        return f"<|im_start|>{role}\n"


class Llama3Template(HeaderTemplate):
    """``<|begin_of_text|>`` then ``<|start_header_id|>ROLE<|end_header_id|>\\n\\nCONTENT<|eot_id|>``.

    Content is stripped and tool results use the ``ipython`` role, as in Meta's template.
    """

    name = "llama3"
    bos_token = "<|begin_of_text|>"
    end_of_turn = "<|eot_id|>"
    role_names = {"tool": "ipython"}
    strip_content = True

    def header(self, role: str) -> str:
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


def find_json_calls(text: str) -> tuple[str, list[dict]]:
    """Finds JSON objects ``{"name": str, "parameters"|"arguments": object}`` in text.

    Returns:
        The text with those objects removed, and the calls in OpenAI form.
    """
    decoder = json.JSONDecoder()
    parts, calls, pos = [], [], 0
    for match in re.finditer(r"\{", text):
        if match.start() < pos:
            continue
        try:
            obj, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        args = call_arguments(obj)
        if args is not None:
            parts.append(text[pos : match.start()])
            calls.append(openai_tool_call(len(calls), obj["name"], args))
            pos = end
    parts.append(text[pos:])
    return "".join(parts), calls


def call_arguments(obj) -> dict | None:
    """The arguments of a ``{"name", "parameters"|"arguments"}`` call object, or None if it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("parameters", obj.get("arguments", {}))
    if isinstance(args, str):  # arguments given as a JSON string, OpenAI style
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return args if isinstance(args, dict) else None


def _with_tools_prompt(messages: list[Message], tools: list[dict]) -> list[Message]:
    if not tools:
        return messages
    declaration = TOOLS_PROMPT + json.dumps(tools, ensure_ascii=False, indent=4)
    if messages and messages[0].role == "system":
        first = messages[0]
        merged = Message("system", f"{first.content}\n\n{declaration}", name=first.name)
        return [merged, *messages[1:]]
    return [Message("system", declaration), *messages]


def _cut_at(text: str, ends: tuple[str, ...]) -> str:
    # The reply ends at the first end-of-turn token; anything after it is not part of this message.
    for end in ends:
        if end:
            text = text.split(end, 1)[0]
    return text


# -- registry and entry points -----------------------------------------------------------------------------------

_REGISTRY: dict[str, Template] = {}


def register_template(template: Template) -> Template:
    """Adds (or replaces) a template under ``template.name``; returns it."""
    if not template.name:
        raise ValueError(f"{template!r}: a template needs a non-empty name")
    _REGISTRY[template.name] = template
    return template


def get_template(name: str | Template) -> Template:
    """Looks a template up by name (a Template passes through).

    Raises:
        ValueError: Unknown name; the message lists the known ones.
    """
    if isinstance(name, Template):
        return name
    if name not in _REGISTRY:
        raise ValueError(f"unknown chat template {name!r}; known templates: {', '.join(list_templates())}")
    return _REGISTRY[name]


def list_templates() -> list[str]:
    """Names of the registered templates, sorted."""
    return sorted(_REGISTRY)


def render(
    template: str | Template, messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = True
) -> str:
    """Renders a conversation to prompt text.

    Args:
        template: Template name or object.
        messages: OpenAI-style message dicts.
        tools: OpenAI ``tools`` (or plain function dicts) to declare.
        add_generation_prompt: End with the header of a new assistant turn.

    Returns:
        The text, starting with the template's bos token text if it has one.

    Raises:
        ValueError: Unknown template, or a malformed message or tool.
    """
    t = get_template(template)
    segs = t.segments(normalize_messages(messages, t.roles), normalize_tools(tools), add_generation_prompt)
    return (t.bos_token or "") + "".join(s.text for s in segs)


def render_ids(
    template: str | Template,
    tokenizer: Tokenizer,
    messages: list[dict],
    tools: list[dict] | None = None,
    add_generation_prompt: bool = False,
) -> tuple[list[int], list[bool]]:
    """Renders a conversation to token ids with a trainable mask, for SFT.

    Assistant content (tool calls included) and its end-of-turn token are trainable; headers, other roles and the
    bos id are not. Segments are tokenized one by one, so ``ids == tokenizer.encode(render(...))``. Where the
    tokenizer merges text across a segment boundary (e.g. a reply starting with a newline after the header's
    newline), the boundary chunk is re-encoded as a whole and the merged token takes the later segment's flag.

    Args:
        template: Template name or object.
        tokenizer: The tokenizer; its special tokens are single ids.
        messages: OpenAI-style message dicts.
        tools: OpenAI ``tools`` to declare.
        add_generation_prompt: End with the header of a new assistant turn.

    Returns:
        ``(ids, trainable)``, two lists of equal length.

    Raises:
        ValueError: Unknown template, malformed messages, or the template needs a bos id the tokenizer lacks.
    """
    t = get_template(template)
    segs = t.segments(normalize_messages(messages, t.roles), normalize_tools(tools), add_generation_prompt)
    ids, mask = [], []
    if t.bos_token is not None:
        if tokenizer.bos_id is None:
            raise ValueError(f"template {t.name!r} starts with {t.bos_token!r} but the tokenizer has no bos id")
        ids, mask = [tokenizer.bos_id], [False]
    return _encode_segments(tokenizer, segs, ids, mask)


def parse(template: str | Template, text: str) -> ParsedMessage:
    """Parses a model's raw reply (with or without the end-of-turn token) into content and tool calls."""
    return get_template(template).parse(text)


def _encode_segments(tokenizer: Tokenizer, segments: list[Segment], ids: list[int], mask: list[bool]):
    specials = sorted(tokenizer.special_tokens, key=len, reverse=True)
    split = re.compile("|".join(map(re.escape, specials))) if specials else None
    # Tokenizers split text at special tokens, so only the text since the last special token (`chunk`) can
    # interact with the next segment: re-encode chunk + segment and keep the common prefix's flags.
    chunk, chunk_start = "", len(ids)
    for seg in _merge(segments):
        joint = tokenizer.encode(chunk + seg.text)
        k = 0
        for a, b in zip(ids[chunk_start:], joint, strict=False):
            if a != b:
                break
            k += 1
        ids[chunk_start:] = joint
        mask[chunk_start:] = mask[chunk_start : chunk_start + k] + [seg.trainable] * (len(joint) - k)
        matches = list(split.finditer(seg.text)) if split else []
        if not matches:
            chunk += seg.text
        else:
            chunk = seg.text[matches[-1].end() :]
            chunk_start = len(ids) - len(tokenizer.encode(chunk)) if chunk else len(ids)
    return ids, mask


def _merge(segments: list[Segment]) -> list[Segment]:
    # Neighbours with the same flag are tokenized together: fewer boundaries, same ids as the joined text.
    out: list[Segment] = []
    for seg in segments:
        if not seg.text:
            continue
        if out and out[-1].trainable == seg.trainable:
            out[-1] = Segment(out[-1].text + seg.text, seg.trainable)
        else:
            out.append(seg)
    return out
