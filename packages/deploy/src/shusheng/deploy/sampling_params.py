"""Per-request sampling parameters, with the semantics of OpenAI's completions API as vLLM implements them.

References: OpenAI API reference (``presence_penalty``/``frequency_penalty``: subtracted from the logits of tokens
already generated, once / once per occurrence); CTRL (Keskar et al., 2019) and Hugging Face for
``repetition_penalty`` (positive logits of tokens seen in prompt or output are divided by it, negative ones
multiplied); vLLM's ``SamplingParams`` for defaults, ranges and ``top_k`` = 0 or -1 meaning off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_LOGPROBS = 20  # top alternatives a request may ask for, per token (OpenAI allows up to 20)
SAMPLING_EPS = 1e-5  # temperatures below this are greedy (dividing by them would overflow)


@dataclass
class SamplingParams:
    """How one request samples and when it stops.

    Attributes:
        n: Number of completions for the prompt.
        temperature: Softmax temperature; 0 is greedy (argmax of the penalized logits).
        top_p: Keep the smallest set of most likely tokens whose probability reaches ``top_p``; in (0, 1].
        top_k: Keep the ``top_k`` most likely tokens; 0 or -1 is off.
        min_p: Drop tokens whose probability is below ``min_p`` times that of the most likely token; in [0, 1].
        repetition_penalty: > 1 discourages tokens seen in the prompt or the output so far (HF/CTRL style).
        presence_penalty: Subtracted once from the logit of every token already in the output; in [-2, 2].
        frequency_penalty: Subtracted from a token's logit once per occurrence in the output; in [-2, 2].
        seed: Seed of this request's own random stream; the same seed gives the same tokens whatever else is in
            the batch.
        max_tokens: Most tokens to generate; None means up to the context limit.
        min_tokens: Tokens to generate before eos, ``stop_token_ids`` or ``stop`` may end the sequence.
        stop: Strings that end the sequence; not part of the output unless ``include_stop_str_in_output``.
            A single string is accepted.
        stop_token_ids: Token ids that end the sequence, in addition to eos.
        ignore_eos: Keep generating after eos.
        logprobs: Return the log-probability of each chosen token and of this many top alternatives (0: only the
            chosen token's); None returns none. Log-probabilities are of the model's raw distribution.
        prompt_logprobs: The same for each prompt token (given the tokens before it).
        skip_special_tokens: Leave special tokens out of the output text.
        include_stop_str_in_output: Keep the matched stop string (or stop token text) in the output.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False

    def __post_init__(self):
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = [] if self.stop_token_ids is None else list(self.stop_token_ids)
        self._verify()

    def _verify(self) -> None:
        def fail(message: str):
            raise ValueError(message)

        if not isinstance(self.n, int) or self.n < 1:
            fail(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            fail(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            fail(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            fail(f"top_k must be -1 or 0 (off) or >= 1, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            fail(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            fail(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                fail(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if self.seed is not None and not isinstance(self.seed, int):
            fail(f"seed must be an int or None, got {self.seed!r}")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            fail(f"max_tokens must be >= 1 or None, got {self.max_tokens}")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            fail(f"min_tokens must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            fail(f"min_tokens must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}")
        if not all(isinstance(s, str) and s for s in self.stop):
            fail(f"stop must hold non-empty strings, got {self.stop!r}")
        if not all(isinstance(i, int) and i >= 0 for i in self.stop_token_ids):
            fail(f"stop_token_ids must hold token ids >= 0, got {self.stop_token_ids!r}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or not 0 <= value <= MAX_LOGPROBS):
                fail(f"{name} must be in [0, {MAX_LOGPROBS}] or None, got {value}")

    @property
    def greedy(self) -> bool:
        """True when the request takes the argmax (temperature 0); top_k/top_p/min_p and seed are then moot."""
        return self.temperature < SAMPLING_EPS

    def all_stop_token_ids(self, eos_ids: Sequence[int] = ()) -> list[int]:
        """Token ids that end this request: ``eos_ids`` (unless ``ignore_eos``) plus ``stop_token_ids``.

        Args:
            eos_ids: The model's end-of-sequence ids (e.g. ``tokenizer.stop_ids``).

        Returns:
            The ids, without duplicates, eos first.
        """
        eos = [] if self.ignore_eos else list(eos_ids)
        return list(dict.fromkeys(eos + self.stop_token_ids))
