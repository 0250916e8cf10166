"""Stop conditions of one sequence, applied to its stream of tokens and text deltas.

A stop string can span several tokens, so text that could still become one is held back: after each token, the
longest tail of the text that is a proper prefix of some stop string stays unreleased until the next tokens show
whether it completes the stop string (then it is cut, with everything after it) or not (then it is released).
The stop string that ends first in the text wins (the longest one among those ending at the same place), which
makes the result independent of how the text was split into deltas. Finish reasons follow the OpenAI API:
"stop" (eos, a stop token id, a stop string) and "length" (``max_tokens``).
"""

from __future__ import annotations

from collections.abc import Sequence

from .sampling_params import SamplingParams


class StopChecker:
    """Decides when one sequence stops and which text to stream.

    Feed it every generated token with the text delta the :class:`~shusheng.model.tokenizer.IncrementalDetokenizer`
    returned for it. The concatenation of everything ``update`` and ``flush`` return is the output text: the full
    text up to the stop string (included with ``include_stop_str_in_output``), without the stop token's text.

    Args:
        params: The request's sampling parameters (``stop``, ``stop_token_ids``, ``ignore_eos``, ``min_tokens``,
            ``max_tokens``, ``include_stop_str_in_output``).
        eos_ids: The model's end-of-sequence ids (e.g. ``tokenizer.stop_ids``).
        max_tokens: Token limit when it is lower than ``params.max_tokens`` (e.g. what the context window leaves);
            None uses ``params.max_tokens``.

    Attributes:
        num_tokens: Tokens seen so far.
        output_text: Text released so far.
        finish_reason: None while running, then "stop" or "length".
        stop_reason: The stop string or stop token id that ended the sequence (None for eos and "length").
    """

    def __init__(self, params: SamplingParams, eos_ids: Sequence[int] = (), max_tokens: int | None = None):
        self.params = params
        self.stop_ids = set(params.all_stop_token_ids(eos_ids))
        limits = [m for m in (params.max_tokens, max_tokens) if m is not None]
        self.max_tokens = min(limits) if limits else None
        self.num_tokens = 0
        self.output_text = ""
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self._text = ""  # all text received (up to a stop string once one matched)
        self._released = 0  # chars of _text released

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def update(self, token_id: int, text_delta: str) -> tuple[str, str | None]:
        """Takes one generated token and its text.

        Args:
            token_id: The sampled id.
            text_delta: Its new text from the incremental detokenizer (may be empty).

        Returns:
            (text to stream now, finish reason or None). Once a finish reason is returned the sequence is over.

        Raises:
            RuntimeError: The sequence has already finished.
        """
        if not text_delta and not self.params.stop:  # nothing to scan or release (deferred text, partial chars)
            return "", self.count(token_id)
        if self.finished:
            raise RuntimeError(f"sequence already finished ({self.finish_reason}); no more tokens")
        self.num_tokens += 1
        may_stop = self.num_tokens > self.params.min_tokens
        if may_stop and token_id in self.stop_ids:
            self.stop_reason = token_id if token_id in self.params.stop_token_ids else None
            self._text += text_delta if self.params.include_stop_str_in_output else ""
            return self._finish("stop", len(self._text))
        end = self._append(text_delta, may_stop)
        if self.finished:
            return self._release(end), self.finish_reason
        if self.max_tokens is not None and self.num_tokens >= self.max_tokens:
            return self._finish("length", len(self._text))
        return self._release(end), None

    def count(self, token_id: int) -> str | None:
        """Takes one generated token whose text is not looked at: ``update(token_id, "")`` for a sequence without
        stop strings (the engine's per-token fast path when it makes the text later).

        Returns:
            The finish reason, or None.

        Raises:
            RuntimeError: The sequence has already finished, or has stop strings (their text must be scanned).
        """
        if self.finish_reason is not None:
            raise RuntimeError(f"sequence already finished ({self.finish_reason}); no more tokens")
        if self.params.stop:
            raise RuntimeError("a sequence with stop strings needs its text: call update()")
        n = self.num_tokens = self.num_tokens + 1
        if token_id in self.stop_ids and n > self.params.min_tokens:
            self.stop_reason = token_id if token_id in self.params.stop_token_ids else None
            self.finish_reason = "stop"
        elif self.max_tokens is not None and n >= self.max_tokens:
            self.finish_reason = "length"
        return self.finish_reason

    def flush(self, text_delta: str = "") -> str:
        """Releases the text still held back, e.g. when the engine ends the sequence or the detokenizer flushes.

        Args:
            text_delta: Last text to add first (``IncrementalDetokenizer.flush()``); a stop string completed by it
                still cuts the text.

        Returns:
            The rest of the output text.
        """
        if self.finished:
            return ""
        end = self._append(text_delta, may_stop=self.num_tokens > self.params.min_tokens)
        return self._release(end if self.finished else len(self._text))

    def _append(self, delta: str, may_stop: bool) -> int:
        """Adds text; returns how far it may be released (cutting at a stop string, which finishes)."""
        start = len(self._text)
        self._text += delta
        if not self.params.stop:
            return len(self._text)
        if may_stop and delta:
            match = self._find_stop(start)
            if match is not None:
                begin, stop = match
                self.finish_reason, self.stop_reason = "stop", stop
                self._text = self._text[: begin + len(stop)]
                return begin + len(stop) if self.params.include_stop_str_in_output else begin
        return len(self._text) - self._held_back()

    def _find_stop(self, start: int) -> tuple[int, str] | None:
        """The stop string ending first in the text, among matches ending after ``start``: (its index, it)."""
        best = None
        for stop in self.params.stop:
            i = self._text.find(stop, max(0, start - len(stop) + 1))
            if i >= 0 and (best is None or (i + len(stop), i) < (best[0] + len(best[1]), best[0])):
                best = (i, stop)
        return best

    def _held_back(self) -> int:
        """Length of the longest tail of the unreleased text that is a proper prefix of a stop string."""
        pending = self._text[self._released :]
        longest = 0
        for stop in self.params.stop:
            for k in range(min(len(stop) - 1, len(pending)), longest, -1):
                if pending.endswith(stop[:k]):
                    longest = k
                    break
        return longest

    def _release(self, end: int) -> str:
        text = self._text[self._released : end]
        self._released = max(self._released, end)
        self.output_text += text
        return text

    def _finish(self, reason: str, end: int) -> tuple[str, str]:
        self.finish_reason = reason
        return self._release(end), reason
