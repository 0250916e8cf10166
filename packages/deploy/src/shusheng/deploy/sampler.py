"""Batched on-device sampling: penalties, temperature, top-k / top-p / min-p, per-request seeds, logprobs.

One step, every row at once (per-row parameters are (B,) tensors built once per step by
:meth:`SamplingTensors.from_params`):

1. raw log-probabilities ``log_softmax(logits)``: what ``logprobs`` report, as vLLM does by default;
2. ``min_tokens``: rows that produced fewer than ``min_tokens`` tokens get their stop ids set to -inf;
3. penalties: repetition (prompt + output), then frequency and presence (output only);
4. greedy rows take the argmax here; the others divide by their temperature, keep the top-k, then the top-p
   nucleus (of the renormalized top-k distribution), then drop tokens below ``min_p`` times the best one;
5. a sample from ``probs`` is ``argmax(probs / q)`` with ``q ~ Exp(1)`` per token (the exponential race, the
   Gumbel-max trick in another form). Unseeded rows draw ``q`` in one batched op from the global RNG; a seeded
   row draws its own row from its request's ``torch.Generator``, so its tokens do not depend on the batch.

No host syncs: batch-wide switches (any top-k? any penalty?) are Python values known when the tensors are built.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import kernels
from .sampling_params import SamplingParams


@dataclass
class SamplingTensors:
    """Per-row sampling parameters of one step, on the logits' device.

    A field that is None is unused by every row of the batch, and its work is skipped.

    Attributes:
        temperatures: (B,) float32; 1.0 on greedy rows (their random sample is discarded).
        greedy: (B,) bool, rows that take the argmax; None when no row is greedy.
        all_greedy: Every row is greedy: no random sampling at all.
        top_ks: (B,) int64, tokens kept per row (``vocab_size`` where off).
        max_top_k: The largest top-k when every sampled row has one (then only that many candidates are sorted),
            else None.
        top_ps: (B,) float32, nucleus mass per row (1.0 where off).
        min_ps: (B,) float32 (0.0 where off).
        repetition_penalties, presence_penalties, frequency_penalties: (B,) float32 each; None when no row has a
            penalty.
        output_tokens: (B, Lo) int64 output ids so far, right-padded with ``vocab_size``; None without penalties.
        prompt_tokens: (B, Lp) int64 prompt ids, padded likewise; None when no row has a repetition penalty.
        min_tokens_rows, min_tokens_ids: (K,) int64 each: (row, token) pairs set to -inf (stop ids of rows still
            under their ``min_tokens``); None when there are none.
        seeded_rows: Rows sampled with their own generator (seeded and not greedy).
        max_num_logprobs: Largest ``logprobs`` asked for in the batch; None when no row asks.
        chosen_logprobs: Return the chosen ids' log-probabilities even when no row asked for logprobs (a
            log-softmax over the vocabulary; the engine's argmax-only steps skip it).
    """

    temperatures: Tensor | None
    greedy: Tensor | None
    all_greedy: bool
    top_ks: Tensor | None
    max_top_k: int | None
    top_ps: Tensor | None
    min_ps: Tensor | None
    repetition_penalties: Tensor | None
    presence_penalties: Tensor | None
    frequency_penalties: Tensor | None
    output_tokens: Tensor | None
    prompt_tokens: Tensor | None
    min_tokens_rows: Tensor | None
    min_tokens_ids: Tensor | None
    seeded_rows: tuple[int, ...]
    max_num_logprobs: int | None
    chosen_logprobs: bool = True

    @staticmethod
    def argmax_only(p: SamplingParams) -> bool:
        """Whether a row is the argmax of its raw logits and nothing else: greedy, without penalties, min_tokens or
        logprobs. A batch of such rows needs no per-row tensors (see :meth:`argmax`)."""
        return (p.greedy and p.repetition_penalty == 1.0 and not p.presence_penalty and not p.frequency_penalty
                and not p.min_tokens and p.logprobs is None)

    @classmethod
    def argmax(cls) -> SamplingTensors:
        """What :meth:`from_params` makes for rows that are all :meth:`argmax_only`, whatever their number (the
        engine skips building it from every row)."""
        return cls(None, None, True, None, None, None, None, None, None, None, None, None, None, None, (), None,
                   chosen_logprobs=False)

    @classmethod
    def from_params(
        cls,
        params: Sequence[SamplingParams],
        output_token_ids: Sequence[Sequence[int]],
        prompt_token_ids: Sequence[Sequence[int]],
        device: torch.device | str,
        vocab_size: int,
        eos_ids: Sequence[int] = (),
    ) -> SamplingTensors:
        """Builds the step's tensors from each row's parameters and tokens (host work, one copy per tensor).

        Args:
            params: One ``SamplingParams`` per row.
            output_token_ids: Tokens each row has generated so far (for penalties and ``min_tokens``).
            prompt_token_ids: Each row's prompt (for the repetition penalty).
            device: Device of the logits.
            vocab_size: Width V of the logits.
            eos_ids: The model's end-of-sequence ids, masked with ``stop_token_ids`` under ``min_tokens``
                (except for rows with ``ignore_eos``).

        Returns:
            The tensors for :class:`Sampler`.
        """
        device = torch.device(device)
        B, V = len(params), vocab_size
        if not (len(output_token_ids) == len(prompt_token_ids) == B):
            raise ValueError(f"need one output and one prompt list per row: {B} params, "
                             f"{len(output_token_ids)} outputs, {len(prompt_token_ids)} prompts")
        greedy = [p.greedy for p in params]
        sampled = [p for p in params if not p.greedy]

        def put(data, dtype):
            t = torch.tensor(data, dtype=dtype)
            return (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)

        def padded(lists):  # (B, L) with pad id V, which lands in a dropped extra column of the counts
            L = max(1, max((len(x) for x in lists), default=0))
            flat = array("q")  # several times faster than torch.tensor on nested lists
            for x in lists:
                flat.extend(x)
                flat.extend([V] * (L - len(x)))
            t = torch.frombuffer(flat, dtype=torch.long).view(B, L)
            return (t.pin_memory() if device.type == "cuda" else t.clone()).to(device, non_blocking=True)

        use_repetition = any(p.repetition_penalty != 1.0 for p in params)
        use_penalties = use_repetition or any(p.presence_penalty or p.frequency_penalty for p in params)
        if sampled or use_penalties:  # one copy for all float parameters: (6, B)
            floats = put([[1.0 if p.greedy else p.temperature for p in params], [p.top_p for p in params],
                          [p.min_p for p in params], [p.repetition_penalty for p in params],
                          [p.presence_penalty for p in params], [p.frequency_penalty for p in params]], torch.float32)
            temperatures, top_ps, min_ps, repetition, presence, frequency = floats.unbind(0)
        else:  # all greedy, no penalties: argmax needs no per-row tensors (the common serving fast path)
            temperatures = top_ps = min_ps = repetition = presence = frequency = None

        rows, ids = [], []
        for i, (p, out) in enumerate(zip(params, output_token_ids, strict=True)):
            if len(out) < p.min_tokens:
                stops = [t for t in p.all_stop_token_ids(eos_ids) if 0 <= t < V]
                rows += [i] * len(stops)
                ids += stops
        wanted = [p.logprobs for p in params if p.logprobs is not None]
        return cls(
            temperatures=temperatures,
            greedy=put(greedy, torch.bool) if any(greedy) and sampled else None,
            all_greedy=not sampled,
            top_ks=put([min(p.top_k, V) if p.top_k > 0 else V for p in params], torch.long)
            if any(p.top_k > 0 for p in sampled) else None,
            max_top_k=max(min(p.top_k, V) for p in sampled) if sampled and all(p.top_k > 0 for p in sampled) else None,
            top_ps=top_ps if any(p.top_p < 1.0 for p in sampled) else None,
            min_ps=min_ps if any(p.min_p > 0.0 for p in sampled) else None,
            repetition_penalties=repetition if use_penalties else None,
            presence_penalties=presence if use_penalties else None,
            frequency_penalties=frequency if use_penalties else None,
            output_tokens=padded(output_token_ids) if use_penalties else None,
            prompt_tokens=padded(prompt_token_ids) if use_repetition else None,
            min_tokens_rows=put(rows, torch.long) if rows else None,
            min_tokens_ids=put(ids, torch.long) if rows else None,
            seeded_rows=tuple(i for i, p in enumerate(params) if p.seed is not None and not p.greedy),
            max_num_logprobs=max(wanted) if wanted else None,
        )


@dataclass
class SamplerOutput:
    """Chosen tokens and their log-probabilities under the model's raw distribution (on the logits' device).

    :func:`prompt_logprobs` returns the same, with the prompt's tokens 1.. as ``token_ids``.

    Attributes:
        token_ids: (B,) int64 chosen ids.
        logprobs: (B,) float32 log-probability of each chosen id; None when the step's tensors skipped them
            (``SamplingTensors.chosen_logprobs``).
        ranks: (B,) int64 rank of the chosen id (1 = most likely); None when no row asked for logprobs.
        top_token_ids: (B, N) int64 the N most likely ids, most likely first (N = the largest ``logprobs`` asked
            for; a row that asked for fewer uses the first ones); None when N = 0 or nobody asked.
        top_logprobs: (B, N) float32 their log-probabilities.
    """

    token_ids: Tensor
    logprobs: Tensor | None
    ranks: Tensor | None = None
    top_token_ids: Tensor | None = None
    top_logprobs: Tensor | None = None


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A request's own random stream; keep it with the request and pass it to every step's :class:`Sampler`."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class Sampler(nn.Module):
    """Samples one token per row of a (B, V) logits tensor; see the module docstring for the order of steps."""

    def forward(
        self, logits: Tensor, tensors: SamplingTensors, generators: Mapping[int, torch.Generator] | None = None
    ) -> SamplerOutput:
        """Samples the next tokens.

        Args:
            logits: (B, V) next-token logits, any float dtype; not modified.
            tensors: This step's :class:`SamplingTensors`, built for these B rows.
            generators: Row index -> that request's generator (see :func:`make_generator`), for every row in
                ``tensors.seeded_rows``. A generator advances by one draw of V numbers per step.

        Returns:
            The chosen ids with their raw log-probabilities and, when asked for, ranks and top alternatives.

        Raises:
            ValueError: A seeded row has no generator.
        """
        generators = generators or {}
        missing = [i for i in tensors.seeded_rows if i not in generators]
        if missing:
            raise ValueError(f"rows {missing} have a seed but no generator: pass make_generator(seed, device)")
        if (tensors.all_greedy and tensors.max_num_logprobs is None and not tensors.chosen_logprobs
                and tensors.min_tokens_rows is None and tensors.presence_penalties is None):
            return SamplerOutput(argmax_rows(logits), None)  # in the logits' own dtype: no fp32 copy
        raw = logits.float()  # (B, V)
        raw_logprobs = raw.log_softmax(-1) if tensors.max_num_logprobs is not None else None

        x = raw
        if tensors.min_tokens_rows is not None:
            rows, ids = tensors.min_tokens_rows, tensors.min_tokens_ids
            x = x.index_put((rows, ids), torch.full_like(rows, float("-inf"), dtype=x.dtype))
        if tensors.presence_penalties is not None:
            x = apply_penalties(x, tensors)

        if tensors.greedy is not None or tensors.all_greedy:
            greedy_ids = argmax_rows(x)  # of the penalized logits; temperature would not change it
        if tensors.all_greedy:
            token_ids = greedy_ids
        else:
            x = x / tensors.temperatures[:, None]
            if tensors.top_ks is not None or tensors.top_ps is not None:
                x = apply_top_k_top_p(x, tensors.top_ks, tensors.top_ps, tensors.max_top_k)
            probs = x.softmax(-1)  # (B, V)
            if tensors.min_ps is not None:
                probs = apply_min_p(probs, tensors.min_ps)
            token_ids = exponential_race(probs, tensors.seeded_rows, generators)
            if tensors.greedy is not None:
                token_ids = torch.where(tensors.greedy, greedy_ids, token_ids)

        if raw_logprobs is None:
            if not tensors.chosen_logprobs:
                return SamplerOutput(token_ids, None)
            chosen = raw.gather(-1, token_ids[:, None])[:, 0] - raw.logsumexp(-1)
            return SamplerOutput(token_ids, chosen)
        return _gather_logprobs(raw_logprobs, token_ids, tensors.max_num_logprobs)


def argmax_rows(x: Tensor, max_rows: int = 8) -> Tensor:
    """`x.argmax(-1)` of a (B, V) tensor, the first maximum on ties. On a GPU, the Triton kernel
    (`kernels.argmax`); otherwise a few long rows are reduced in two stages, chunk maxima then the best chunk."""
    if x.is_cuda and kernels.HAS_TRITON and x.stride(-1) == 1:
        return kernels.argmax(x)  # one launch, any float dtype
    B, V = x.shape
    chunks = next((c for c in (256, 128, 64, 32) if V % c == 0 and V // c >= 32), None)
    if B > max_rows or chunks is None:
        return x.argmax(-1)
    vals, idx = x.view(B, chunks, V // chunks).max(-1)  # first maximum of each chunk
    best = vals.argmax(-1, keepdim=True)  # first chunk holding the row's maximum
    return (best * (V // chunks) + idx.gather(-1, best))[:, 0]


def apply_penalties(logits: Tensor, tensors: SamplingTensors) -> Tensor:
    """Repetition penalty over prompt + output tokens, then frequency and presence penalties over output tokens.

    For a token seen before, repetition divides a positive logit by the penalty and multiplies a negative one
    (CTRL / Hugging Face); then ``logit -= frequency_penalty * count + presence_penalty * (count > 0)`` with
    ``count`` its occurrences in the output (OpenAI).

    Args:
        logits: (B, V) float logits; not modified.
        tensors: Step tensors with the penalty fields set.

    Returns:
        (B, V) penalized logits.
    """
    B, V = logits.shape
    # (B, V + 1): the pad id V counts into the extra column, which is dropped
    counts = torch.zeros(B, V + 1, dtype=logits.dtype, device=logits.device)
    counts = counts.scatter_add_(1, tensors.output_tokens, torch.ones_like(tensors.output_tokens, dtype=logits.dtype))
    counts = counts[:, :V]
    if tensors.prompt_tokens is not None:
        seen = torch.zeros(B, V + 1, dtype=torch.bool, device=logits.device)
        seen = seen.scatter_(1, tensors.prompt_tokens, True)[:, :V] | (counts > 0)
        r = tensors.repetition_penalties[:, None]
        logits = torch.where(seen, torch.where(logits > 0, logits / r, logits * r), logits)
    return logits - tensors.frequency_penalties[:, None] * counts - tensors.presence_penalties[:, None] * (counts > 0)


def apply_top_k_top_p(
    logits: Tensor, top_ks: Tensor | None, top_ps: Tensor | None, max_top_k: int | None = None
) -> Tensor:
    """Sets to -inf what falls outside each row's top-k, then outside the top-p nucleus of what is left.

    The nucleus is the smallest set of most likely tokens whose (renormalized) probability reaches ``top_p``:
    a token is dropped when the mass of the tokens ranked above it already reaches ``top_p``.

    Args:
        logits: (B, V) temperature-scaled logits.
        top_ks: (B,) int64 tokens to keep (V = off), or None.
        top_ps: (B,) float nucleus mass (1.0 = off), or None.
        max_top_k: An upper bound on ``top_ks`` (every row has a top-k): only the ``max_top_k`` best candidates
            are ranked, with ``topk`` instead of a sort of the whole vocabulary (several times faster at V=150k).

    Returns:
        (B, V) logits with the dropped tokens at -inf.
    """
    if max_top_k is not None:
        sorted_logits, order = logits.topk(max_top_k, dim=-1)  # (B, K), most likely first
        out = torch.full_like(logits, float("-inf"))
    else:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        out = torch.empty_like(logits)
    if top_ks is not None:
        rank = torch.arange(sorted_logits.shape[-1], device=logits.device)
        sorted_logits = sorted_logits.masked_fill(rank[None, :] >= top_ks[:, None], float("-inf"))
    if top_ps is not None:
        probs = sorted_logits.softmax(-1)
        mass_above = probs.cumsum(-1) - probs
        # rows at 1.0 are off: rounding in the cumulative sum must not cut their tail
        drop = (mass_above >= top_ps[:, None]) & (top_ps[:, None] < 1.0)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return out.scatter_(-1, order, sorted_logits)


def apply_min_p(probs: Tensor, min_ps: Tensor) -> Tensor:
    """Zeroes tokens whose probability is below ``min_p`` times the row's largest (the result is unnormalized).

    Args:
        probs: (B, V) probabilities (after top-k / top-p).
        min_ps: (B,) float, 0.0 = off.

    Returns:
        (B, V) probabilities, not renormalized (the exponential race does not need it).
    """
    return probs.masked_fill(probs < min_ps[:, None] * probs.amax(-1, keepdim=True), 0.0)


def exponential_race(probs: Tensor, seeded_rows: Sequence[int], generators: Mapping[int, torch.Generator]) -> Tensor:
    """Samples ``argmax(probs / q)`` with ``q ~ Exp(1)`` i.i.d. per entry: id i wins with probability ``p_i / sum p``.

    Args:
        probs: (B, V) nonnegative weights (need not sum to 1).
        seeded_rows: Rows whose noise comes from ``generators[row]``; the others share the global RNG.
        generators: Row -> generator.

    Returns:
        (B,) int64 sampled ids.
    """
    q = torch.empty_like(probs).exponential_()  # (B, V), one op for all unseeded rows
    for i in seeded_rows:  # each seeded row draws exactly V numbers from its own stream, whatever the batch
        q[i].exponential_(generator=generators[i])
    # q == 0 would make 0/0 = NaN, which argmax would pick
    return (probs / q.clamp_(min=torch.finfo(q.dtype).tiny)).argmax(-1)


def prompt_logprobs(
    logits: Tensor, prompt_ids: Tensor | Sequence[int], n: int, chunk_size: int = 1024
) -> SamplerOutput:
    """Log-probability of each prompt token given the tokens before it, with the top-n alternatives.

    For a prompt split over several prefill chunks, call once per chunk [s, e) with ``prompt_ids[s-1:e]`` and the
    logits of positions s-1 .. e-1 (the previous chunk's last row first): the results cover positions s .. e-1.

    Args:
        logits: (T, V) logits at the prompt's positions (row t predicts token t+1; the last row is unused).
        prompt_ids: (T,) the prompt's ids.
        n: Top alternatives per position (0: none).
        chunk_size: Rows of (T, V) log-softmax computed at a time, to bound memory on long prompts.

    Returns:
        A :class:`SamplerOutput` over positions 1..T-1: ``token_ids`` = ``prompt_ids[1:]``, their log-probabilities
        and ranks, and (when n > 0) the top-n ids and log-probabilities, most likely first.
    """
    prompt_ids = torch.as_tensor(prompt_ids, device=logits.device, dtype=torch.long)
    T = prompt_ids.shape[0]
    if logits.shape[0] != T:
        raise ValueError(f"need one logits row per prompt token: {logits.shape[0]} rows, {T} tokens")
    targets = prompt_ids[1:]
    # a one-token prompt gives one empty chunk
    parts = [
        _gather_logprobs(logits[s : min(s + chunk_size, T - 1)].float().log_softmax(-1), targets[s : s + chunk_size], n)
        for s in range(0, T - 1, chunk_size) or [0]
    ]

    def cat(name):
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else torch.cat(values)

    return SamplerOutput(targets, cat("logprobs"), cat("ranks"), cat("top_token_ids"), cat("top_logprobs"))


def _gather_logprobs(logprobs: Tensor, token_ids: Tensor, n: int) -> SamplerOutput:
    """(B, V) log-probabilities, (B,) ids -> their log-probabilities, ranks and the top-n of each row."""
    chosen = logprobs.gather(-1, token_ids[:, None])  # (B, 1)
    ranks = (logprobs > chosen).sum(-1) + 1
    top_lp, top_ids = logprobs.topk(n, dim=-1) if n > 0 else (None, None)  # sorted, most likely first
    return SamplerOutput(token_ids, chosen[:, 0], ranks, top_ids, top_lp)
