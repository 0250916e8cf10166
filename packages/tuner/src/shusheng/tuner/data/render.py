"""Examples -> token ids with a per-token "trained" flag, through `shusheng.model.chat` templates.

A token is *trained* when the model learns to produce it: the assistant's turns (their content, tool calls and the
end-of-turn token) by default, every token with `train_on="all"`, every token of raw text. The rendering is the
template's own `render_ids`, so the ids equal `tokenizer.encode(render(...))` token for token.

For a preference pair only the final reply is trained (scored): the tokens after the prompt's own rendering. The
prompt must render to a prefix of prompt + reply, which holds for every template here because turns start with a
special token; a tokenizer that breaks this raises rather than scoring the wrong tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from shusheng.model import Tokenizer
from shusheng.model.chat import render_ids

from .formats import Conversation, DataError, Preference, Text


@dataclass
class Sample:
    """One document: token ids and, per token, whether it is a training target."""

    ids: list[int]
    trained: list[bool]
    where: str = ""  # "file record i", for reports

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_trained(self) -> int:
        # position 0 is never predicted (nothing precedes it), so it never counts
        return sum(self.trained[1:])


def encode(
    example: Conversation | Text,
    tokenizer: Tokenizer,
    template: str,
    train_on: str = "assistant",
    system: str | None = None,
    where: str = "",
) -> Sample:
    """Renders a conversation (or raw text) to a `Sample`.

    Args:
        example: a `Conversation` or `Text`.
        tokenizer: the model's tokenizer.
        template: chat template name (`shusheng.model.chat.list_templates()`).
        train_on: "assistant" (assistant turns only) or "all" (every token).
        system: system prompt added to conversations that have none.
        where: the example's origin, for error messages.

    Raises:
        DataError: a malformed conversation (the message names the record and the field).
    """
    if isinstance(example, Text):
        ids = ([tokenizer.bos_id] if tokenizer.bos_id is not None else []) + tokenizer.encode(example.text)
        ids += [tokenizer.eos_id] if tokenizer.eos_id is not None else []
        return Sample(ids, [True] * len(ids), where)
    messages = _with_default_system(example.messages, system)
    try:
        ids, trained = render_ids(template, tokenizer, messages, tools=example.tools)
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None
    if train_on == "all":
        trained = [True] * len(ids)
    return Sample(ids, trained, where)


def encode_pair(
    pair: Preference, tokenizer: Tokenizer, template: str, system: str | None = None, where: str = ""
) -> tuple[Sample, Sample]:
    """Renders prompt + chosen and prompt + rejected; only the reply after the prompt is marked trained.

    Args:
        system: a condition system prompt put first (the reward model's per-domain prompt), or None.

    Raises:
        DataError: malformed messages, or a prompt that does not render to a prefix of the full conversation.
    """
    prompt = [{"role": "system", "content": system}, *pair.prompt] if system else pair.prompt
    try:
        head, _ = render_ids(template, tokenizer, prompt, tools=pair.tools)
        out = []
        for reply in (pair.chosen, pair.rejected):
            ids, trained = render_ids(template, tokenizer, prompt + reply, tools=pair.tools)
            if ids[: len(head)] != head:
                raise DataError(f"{where}: the prompt does not tokenize to a prefix of prompt + reply; "
                                "the reply's tokens cannot be told apart")
            trained = [False] * len(head) + trained[len(head) :]
            out.append(Sample(ids, trained, where))
    except DataError:
        raise
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None
    if not out[0].num_trained or not out[1].num_trained:
        raise DataError(f"{where}: the chosen or rejected reply has no assistant tokens")
    return out[0], out[1]


def _with_default_system(messages: list[dict], system: str | None) -> list[dict]:
    if system and not (messages and messages[0].get("role") == "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages
