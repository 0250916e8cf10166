"""Showing a rendered sample with its trained tokens marked (the `check-data` command)."""

from __future__ import annotations

from itertools import groupby

from shusheng.model import Tokenizer

from .render import Sample

GREEN, RESET = "\033[32m", "\033[0m"


def show_sample(sample: Sample, tokenizer: Tokenizer, color: bool = False) -> str:
    """The sample's text with trained spans in green (`color`) or between `[[` and `]]`.

    Position 0 is never a target (nothing precedes it), so it is shown as untrained whatever its flag.
    """
    flags = [False, *sample.trained[1:]]
    parts, i = [], 0
    for trained, run in groupby(flags):
        n = len(list(run))
        text = tokenizer.decode(sample.ids[i : i + n])
        i += n
        if trained:
            text = f"{GREEN}{text}{RESET}" if color else f"[[{text}]]"
        parts.append(text)
    return "".join(parts)
