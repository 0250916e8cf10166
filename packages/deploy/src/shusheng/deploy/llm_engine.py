"""The engine: `step()` = schedule -> run -> postprocess (sample, detokenize, stop, free).

Single-threaded by design; `AsyncEngine` (async_engine.py) drives it from a background thread for servers.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from operator import attrgetter

import torch
import torch.nn.functional as F

from shusheng.model import Transformer
from shusheng.model.tokenizer import IncrementalDetokenizer, Tokenizer, load_tokenizer

from .block_manager import BlockManager
from .config import EngineConfig
from .launched_step import HostSamples, LaunchedStep, needs_host_tokens
from .model_runner import Feed, ModelRunner, StepLogits, to_device
from .output_deltas import choice_delta, wire_choice
from .outputs import CompletionOutput, RequestOutput
from .sampler import Sampler, SamplerOutput, SamplingTensors, make_generator, prompt_logprobs
from .sampling_params import SamplingParams
from .scheduler import ScheduledBatch, Scheduler
from .sequence import PENDING, Sequence, Status
from .stop import StopChecker


def encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of a text prompt: BOS first (unless the text already starts with it), as HF tokenizers do."""
    bos_text = tokenizer.id_to_token(tokenizer.bos_id) if tokenizer.bos_id is not None else None
    add_bos = tokenizer.bos_id is not None and not (bos_text and text.startswith(bos_text))
    return tokenizer.encode(text, add_bos=add_bos)


def prepare_prompt(tokenizer: Tokenizer, limits: RequestLimits, prompt: str | list[int],
                   params: SamplingParams) -> list[int]:
    """Token ids of a prompt (text: BOS + its tokens; ids: as given), checked against `limits`.

    Raises:
        ValueError: the request breaks a limit (the message says which and how to fix it).
    """
    ids = encode_prompt(tokenizer, prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
    limits.check(ids, params)
    return ids


@dataclass(frozen=True)
class RequestLimits:
    """What a request must fit: the vocabulary, the context window and the KV pool (a picklable value, so a
    front end in another process can validate requests without the engine)."""

    vocab_size: int
    max_model_len: int
    num_blocks: int
    block_size: int

    def check(self, ids: list[int], params: SamplingParams) -> None:
        """Raises ValueError naming the limit a request breaks and how to fix it."""
        if not ids:
            raise ValueError("the prompt is empty: give at least one token")
        V = self.vocab_size
        bad = [t for t in ids if not 0 <= t < V]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary (0..{V - 1})")
        n, limit = len(ids), self.max_model_len
        want = n + (params.max_tokens if params.max_tokens is not None else 1)
        if want > limit:
            raise ValueError(
                f"this model's maximum context length is {limit} tokens, but the request needs {want} "
                f"({n} prompt + {want - n} max_tokens); shorten the prompt or lower max_tokens"
            )
        total = n + (params.max_tokens if params.max_tokens is not None else limit - n)
        blocks = (total + self.block_size - 1) // self.block_size
        if blocks > self.num_blocks:
            raise ValueError(
                f"the request can never fit: {total} tokens need {blocks} KV blocks and the pool holds "
                f"{self.num_blocks}; lower max_tokens, or give the KV cache more memory (gpu_memory_utilization, "
                "num_kv_blocks)"
            )


@dataclass
class _Choice:
    """Streaming state of one sequence (one of a request's n choices)."""

    seq: Sequence
    detok: IncrementalDetokenizer
    stop: StopChecker
    out: CompletionOutput
    request: _Request
    generator: torch.Generator | None = None
    deferred: list[int] = field(default_factory=list)  # ids whose text is not made yet (see LLMEngine._append)
    argmax: bool = field(init=False)  # samples the argmax and nothing else (`SamplingTensors.argmax_only`)
    ids_only: bool = field(init=False)  # no stop strings or logprobs: with deferred text a token is an id and a count

    def __post_init__(self):
        self.seq.choice = self
        p = self.seq.params
        self.argmax = SamplingTensors.argmax_only(p)
        self.ids_only = not p.stop and p.logprobs is None


_argmax, _forked = attrgetter("argmax"), attrgetter("forked")


@dataclass
class _Request:
    request_id: str
    prompt: str | None
    prompt_ids: list[int]
    params: SamplingParams
    choices: list[_Choice] = field(default_factory=list)
    arrival: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    emitted: bool = False  # has had an output (wire outputs: the first one carries the prompt's log-probs)

    @property
    def finished(self) -> bool:
        return len(self.choices) == self.params.n and all(c.out.finished for c in self.choices)


def _choice_index(c: _Choice) -> int:
    return c.out.index


class LLMEngine:
    """A continuous-batching engine over one checkpoint.

    Args:
        config: an EngineConfig (checkpoint path and engine options).
        tokenizer: override the checkpoint folder's tokenizer.
        model: an in-memory model to serve instead of loading `config.model` (then `tokenizer` is required).
        tp_group: this rank's tensor-parallel process group (tensor_parallel.py builds the ranks); None: one device.
    """

    def __init__(self, config: EngineConfig, tokenizer: Tokenizer | None = None, model: Transformer | None = None,
                 tp_group=None):
        if model is not None and tokenizer is None:
            raise ValueError("an in-memory model needs its tokenizer: pass tokenizer=")
        self.config = config
        self.tokenizer = tokenizer or load_tokenizer(config.model)
        torch.manual_seed(config.seed)
        self.runner = ModelRunner(config, model, tp_group)
        self.model_config = self.runner.model_config
        self.max_model_len = self.runner.max_model_len
        self.block_manager = BlockManager(self.runner.num_blocks, config.block_size, config.enable_prefix_caching)
        self.limits = RequestLimits(self.model_config.vocab_size, self.max_model_len, self.runner.num_blocks,
                                    config.block_size)
        self.scheduler = Scheduler(config, self.block_manager)
        self.sampler = Sampler()
        self.eos_ids = self._eos_ids()
        self.requests: dict[str, _Request] = {}
        self._counter = itertools.count()
        self._inflight: LaunchedStep | None = None  # the step whose samples are read back in the next step() call
        self.gpu_wait_s = 0.0  # time the host spent waiting for sampled tokens (~0: the host is the bottleneck)
        # outputs as deltas (`output_deltas`): no prompt, only each choice's new text, ids and their log-probs (the
        # engine process ships nothing else, so the per-step snapshots' O(length) copies would be wasted)
        self.delta_outputs = False
        # step() returns each output as `output_deltas.delta`'s wire tuple, made directly from the engine's state
        # (the engine process pipes nothing else: the dataclasses in between would be built to be taken apart)
        self.wire_outputs = False

    @classmethod
    def from_path(cls, path: str, **engine_options) -> LLMEngine:
        return cls(EngineConfig.from_kwargs(path, **engine_options))

    def _eos_ids(self) -> list[int]:
        eos = self.model_config.eos_token_id
        ids = [] if eos is None else list(eos) if isinstance(eos, list) else [eos]
        return sorted(set(ids) | set(self.tokenizer.stop_ids))

    # ---- requests ----

    def add_request(
        self, prompt: str | list[int], params: SamplingParams | None = None, request_id: str | None = None
    ) -> str:
        """Queue a request: a text prompt (BOS added, as Hugging Face tokenizers do) or token ids.

        Raises:
            ValueError: empty prompt, ids outside the vocabulary, or a request that can never fit the context
                window or the KV pool (the message says which limit and how to fix it).
        """
        params = params or SamplingParams()
        request_id = str(next(self._counter)) if request_id is None else request_id
        ids = self.prepare_prompt(prompt, params)
        self.add_prepared(request_id, prompt if isinstance(prompt, str) else None, ids, params)
        return request_id

    def prepare_prompt(self, prompt: str | list[int], params: SamplingParams) -> list[int]:
        """Token ids of a prompt, validated against the engine's limits (reads no mutable state: thread-safe)."""
        return prepare_prompt(self.tokenizer, self.limits, prompt, params)

    def add_prepared(self, request_id: str, text: str | None, ids: list[int], params: SamplingParams) -> None:
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        max_tokens = params.max_tokens if params.max_tokens is not None else self.max_model_len - len(ids)
        req = _Request(request_id, text, ids, params)
        seq = Sequence(request_id, ids, params)
        req.choices.append(self._choice(req, seq, 0, max_tokens))
        self.requests[request_id] = req
        self.scheduler.add(seq)

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a text prompt: BOS first (unless the text already starts with it), as HF tokenizers do."""
        return encode_prompt(self.tokenizer, text)

    def _choice(self, req: _Request, seq: Sequence, index: int, max_tokens: int) -> _Choice:
        p = seq.params
        return _Choice(
            seq=seq,
            detok=IncrementalDetokenizer(self.tokenizer, skip_special_tokens=p.skip_special_tokens),
            stop=StopChecker(p, self.eos_ids, max_tokens=max_tokens),
            out=CompletionOutput(index=index, logprobs=[] if p.logprobs is not None else None),
            request=req,
            generator=make_generator(p.seed + index, self.runner.device) if p.seed is not None else None,
        )

    def abort(self, request_id: str) -> RequestOutput | tuple | None:
        """Stop a request now (its blocks are freed); returns its final output (with `wire_outputs` as the pipe's
        tuple), or None if unknown/finished."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        for c in req.choices:
            if not c.out.finished:
                self.scheduler.finish(c.seq, "abort")
                c.out.finish_reason = "abort"
                if c.deferred:
                    text = self._deferred_text(c, None)
                    c.out.text += text
                    c.out.delta_text += text
        if self.wire_outputs:
            return self._wire_output(req, time.monotonic(), finished=True)
        out = self._output(req)
        out.finished = True  # also when a request with n > 1 had not forked yet
        return out

    def has_unfinished(self) -> bool:
        """Requests are queued or running (a launched step whose requests are all finished or aborted has nothing
        left to deliver; the next step() drops it)."""
        return bool(self.requests)

    # ---- the step ----

    def step(self, final_only: bool = False) -> list[RequestOutput]:
        """Schedule, run the model once, sample, and return an output for every request that progressed.

        With `async_scheduling` (the default) a step's sampled tokens are read back while the next step runs: a
        call launches step N+1 (its pending tokens fed from step N's device memory), then detokenizes and
        stop-checks step N and returns its outputs. A sequence that stopped at step N has its step N+1 token
        discarded. Steps whose next inputs need the host's tokens (penalties) or that return prompt logprobs are
        finished in the call that launches them.

        Args:
            final_only: return outputs of finished requests only (offline use: saves building a snapshot of every
                running request each step).
        """
        prev, self._inflight = self._inflight, None
        batch = self.scheduler.schedule()
        launched = self._launch(batch, prev) if batch.seqs else None
        outputs = self._complete(prev, final_only) if prev is not None else []
        if launched is not None:
            self.block_manager.commit(launched.batch.seqs)  # the tokens of every computed position are known now
            if launched.overlap:
                self._inflight = launched
            else:
                outputs += self._complete(launched, final_only)
        return outputs

    def _launch(self, batch: ScheduledBatch, prev: LaunchedStep | None) -> LaunchedStep:
        """Run the batch and sample on the device; each sampling sequence gets a PENDING token for its sample."""
        feed = None if prev is None else Feed(prev.sampled.token_ids, prev.rows)
        step = self.runner.run(batch, feed)
        if batch.is_decode_only:
            for seq in batch.seqs:
                seq.num_computed += 1
        else:
            for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
                seq.num_computed += n
        rows, choices = self._sampling_rows(step)
        sampled, positions = None, []
        argmax = all(map(_argmax, choices))  # (the common offline case) no row needs per-row tensors
        if choices:
            # n > 1 repeats a row (rows); otherwise every row samples once, in order (no gather)
            logits = step.logits if rows is None else step.logits[to_device(rows, torch.long, step.logits.device)]
            sampled = self._sample(logits, choices, argmax)
            for c in choices:
                seq = c.seq
                tokens = seq.token_ids
                n = len(tokens)
                positions.append(n)
                tokens.append(PENDING)
                # the length limit is known now: the scheduler need not run the sequence on its last token
                seq.last_is_pending_final = n + 1 - seq.num_prompt_tokens >= c.stop.max_tokens
        wants_logprobs = not argmax and any(c.out.logprobs is not None for c in choices)
        overlap = (self.config.async_scheduling and not step.prompt_logits and sampled is not None
                   and (argmax or not any(needs_host_tokens(c.seq.params) for c in choices)))
        launched = LaunchedStep(batch, step, choices, positions, sampled,
                             {c.seq.seq_id: i for i, c in enumerate(choices)}, overlap)
        if sampled is not None:
            launched.host = HostSamples(sampled, wants_logprobs)
        return launched

    def _complete(self, launched: LaunchedStep, final_only: bool) -> list[RequestOutput]:
        """Read a launched step's samples back, then detokenize, stop-check and build the outputs."""
        if launched.step.prompt_logits:
            self._prompt_logprobs(launched.step)
        touched: dict[str, _Request] = {}
        if launched.host is not None:
            t0 = time.perf_counter()
            host = launched.host.wait()
            self.gpu_wait_s += time.perf_counter() - t0
            tokens = host.token_ids.tolist()
            logprobs = host.logprobs.tolist() if host.logprobs is not None else None
            now = time.monotonic()
            finished = Status.FINISHED
            positions = launched.positions
            for i, c in enumerate(launched.choices):
                seq = c.seq
                if seq.status is finished:  # stopped at the step before, or aborted
                    continue
                token = tokens[i]
                seq.token_ids[positions[i]] = token
                if final_only and c.ids_only:  # `_append` with deferred text, inlined: most offline tokens
                    out = c.out
                    out.token_ids.append(token)
                    out.delta_token_ids.append(token)
                    c.deferred.append(token)
                    reason = c.stop.count(token)
                    if reason is not None:
                        text = self._deferred_text(c, reason)
                        out.text += text
                        out.delta_text += text
                        self._finish(c, reason)
                else:
                    self._append(c, i, token, logprobs, host, defer_text=final_only)
                req = c.request
                if req.first_token is None:
                    req.first_token = now
                if not final_only or seq.status is finished:  # final_only: only a finished one can be returned
                    touched[req.request_id] = req
        outputs = []
        if self.wire_outputs and not final_only:
            now = time.monotonic()
            for rid, req in touched.items():
                outputs.append(out := self._wire_output(req, now))
                if out[1]:
                    del self.requests[rid]
            return outputs
        for rid, req in touched.items():
            if not req.finished:
                if not final_only:
                    outputs.append(self._output(req))
                continue
            outputs.append(self._wire_output(req, time.monotonic()) if self.wire_outputs else self._output(req))
            del self.requests[rid]
        return outputs

    def _sampling_rows(self, step: StepLogits) -> tuple[list[int] | None, list[_Choice]]:
        """Logits row and choice of each sampling sequence (rows None: row i is sequence i's); a request with n > 1
        forks at its first sample."""
        if all(map(_forked, step.sample_seqs)):
            return None, [seq.choice for seq in step.sample_seqs]
        rows, choices = [], []
        for i, seq in enumerate(step.sample_seqs):
            if seq.forked:
                rows.append(i)
                choices.append(seq.choice)
                continue
            req = self.requests[seq.request_id]
            family = [seq]
            seq.forked = True
            max_tokens = req.choices[0].stop.max_tokens
            for k in range(1, seq.params.n):
                child = seq.fork(k)
                self.block_manager.fork(seq, child)
                self.scheduler.admit_fork(child, after=family[-1])
                req.choices.append(self._choice(req, child, k, max_tokens))
                family.append(child)
            for s in family:
                rows.append(i)
                choices.append(req.choices[s.index])
        return rows, choices

    def _sample(self, logits: torch.Tensor, choices: list[_Choice], argmax: bool = False) -> SamplerOutput:
        if argmax:  # every row is `argmax_only`: nothing per row to build
            return self.sampler(logits, SamplingTensors.argmax())
        seqs = [c.seq for c in choices]
        params = [s.params for s in seqs]
        # token lists cost a copy per step: hand them over only when a penalty or min_tokens reads them
        rep = any(p.repetition_penalty != 1.0 for p in params)
        outs = rep or any(p.presence_penalty or p.frequency_penalty or p.min_tokens for p in params)
        tensors = SamplingTensors.from_params(
            params, [s.output_token_ids if outs else [] for s in seqs],
            [s.prompt_token_ids if rep else [] for s in seqs], logits.device, logits.shape[-1], self.eos_ids,
        )
        gens = {i: c.generator for i, c in enumerate(choices) if c.generator is not None}
        return self.sampler(logits, tensors, gens)

    def _append(self, c: _Choice, row: int, token: int, logprobs: list[float] | None, sampled: HostSamples,
                defer_text: bool = False) -> None:
        """Adds a sampled token to its choice: logprobs, text, stop checks; finishes the sequence when it stops.

        With `defer_text` (a step whose caller wants finished requests only) a choice without stop strings keeps
        its ids and detokenizes them in one go when it finishes or its text is next asked for.
        """
        seq, out = c.seq, c.out
        out.token_ids.append(token)
        out.delta_token_ids.append(token)
        if out.logprobs is not None:
            top = []
            if sampled.top_token_ids is not None and seq.params.logprobs:
                k = seq.params.logprobs
                top = list(zip(sampled.top_token_ids[row, :k].tolist(), sampled.top_logprobs[row, :k].tolist(),
                               strict=True))
            out.logprobs.append({"token_id": token, "logprob": logprobs[row], "top": top})
        # the checker's token limit already includes what the context window leaves (see add_prepared)
        if defer_text and not seq.params.stop:  # no stop string reads the text: detokenize when it is wanted
            c.deferred.append(token)
            _, reason = c.stop.update(token, "")
            text = self._deferred_text(c, reason) if reason is not None else ""
        else:
            text = self._deferred_text(c, None) if c.deferred else ""
            delta, reason = c.stop.update(token, c.detok.add(token))
            text += delta
            if reason == "length":  # the detokenizer may still hold the bytes of an unfinished character
                text += c.detok.flush()
        out.text += text
        out.delta_text += text
        if reason is not None:
            self._finish(c, reason)

    def _finish(self, c: _Choice, reason: str) -> None:
        """Ends a choice that stopped (its text is complete): finish reasons, and its sequence's blocks freed."""
        seq, out = c.seq, c.out
        out.finish_reason, out.stop_reason = reason, c.stop.stop_reason
        self.scheduler.finish(seq, reason)
        del seq.token_ids[seq.num_prompt_tokens + len(out.token_ids):]  # a later step's pending token

    @staticmethod
    def _deferred_text(c: _Choice, reason: str | None) -> str:
        """The text of a choice's deferred ids (see `_append`), ending as `reason` ends it: a stop token's own text
        is dropped (unless include_stop_str_in_output), "length" flushes a held-back partial character."""
        ids, c.deferred = c.deferred, []
        if reason == "stop" and not c.seq.params.include_stop_str_in_output:
            return c.detok.add_many(ids[:-1])  # the finished choice's detokenizer is not used again
        text = c.detok.add_many(ids)
        return text + c.detok.flush() if reason == "length" else text

    def _prompt_logprobs(self, step: StepLogits) -> None:
        """Log-probs of the prompt tokens computed this step (chunk by chunk), for requests that asked for them."""
        for seq in list(self.scheduler.running):  # before sampling, every scheduled sequence is still running
            if seq.seq_id not in step.prompt_logits:
                continue
            s, logits = step.prompt_logits.pop(seq.seq_id)
            if s == 0:
                seq.prompt_logprobs = [None]  # the first prompt token has no context
            ids = seq.prompt_token_ids[s : s + logits.shape[0] + 1]  # row j (position s+j) predicts ids[j + 1]
            if len(ids) < 2:
                continue
            n = seq.params.prompt_logprobs
            res = prompt_logprobs(F.pad(logits[: len(ids) - 1], (0, 0, 0, 1)), ids, n)
            for j in range(len(ids) - 1):
                top = [] if res.top_token_ids is None else list(
                    zip(res.top_token_ids[j, :n].tolist(), res.top_logprobs[j, :n].tolist(), strict=True))
                seq.prompt_logprobs.append(
                    {"token_id": ids[j + 1], "logprob": float(res.logprobs[j]), "top": top})

    def _output(self, req: _Request) -> RequestOutput:
        outs = []
        deltas = self.delta_outputs
        for c in sorted(req.choices, key=lambda c: c.out.index):
            o = c.out
            if deltas:  # what is new, without the lists so far (O(new) per step, not O(length))
                outs.append(choice_delta(o))
            else:  # a finished choice hands over its lists; a running one copies (the engine appends to its own)
                tokens = o.token_ids if o.finished else list(o.token_ids)
                logprobs = o.logprobs if o.finished or o.logprobs is None else list(o.logprobs)
                outs.append(CompletionOutput(o.index, o.text, tokens, logprobs, o.finish_reason, o.stop_reason,
                                             o.delta_text, o.delta_token_ids))
            o.delta_text, o.delta_token_ids = "", []
        seq0 = req.choices[0].seq
        return RequestOutput(
            request_id=req.request_id, prompt=None if deltas else req.prompt,
            prompt_token_ids=[] if deltas else req.prompt_ids, outputs=outs,
            finished=all(o.finished for o in outs) and len(outs) == req.params.n,
            prompt_logprobs=seq0.prompt_logprobs or None, num_cached_tokens=seq0.num_cached_prompt,
            metrics={"arrival": req.arrival, "first_token": req.first_token, "now": time.monotonic()},
        )

    def _wire_output(self, req: _Request, now: float, finished: bool = False) -> tuple:
        """What `output_deltas.delta(self._output(req), first)` makes of a delta output, made directly (see
        `wire_outputs`): the request's id, whether it finished (or `finished`: an abort), its cached prompt tokens,
        metrics, the prompt's log-probs (its first output only) and per choice (index, new text, new ids, their
        log-probs, finish reason, stop reason)."""
        choices, done = [], 0
        for c in sorted(req.choices, key=_choice_index) if len(req.choices) > 1 else req.choices:
            o = c.out
            choices.append(wire_choice(o))
            done += o.finish_reason is not None
            o.delta_text, o.delta_token_ids = "", []
        seq0 = req.choices[0].seq
        first, req.emitted = not req.emitted, True
        return (req.request_id, finished or done == len(choices) == req.params.n, seq0.num_cached_prompt,
                {"arrival": req.arrival, "first_token": req.first_token, "now": now},
                (seq0.prompt_logprobs or None) if first else None, choices)

    def embed(self, prompts: list[str | list[int]]) -> torch.Tensor:
        """Embeddings: the mean of the final normalized hidden states over each prompt, L2-normalized.

        A decoder LM's pooled states are a serviceable general-purpose text vector (near-duplicate detection,
        clustering, a retrieval baseline) but not a trained retriever: for RAG quality use a dedicated embedding
        model. Raises ValueError for empty or over-long prompts.
        """
        ids = [self.encode_prompt(p) if isinstance(p, str) else [int(t) for t in p] for p in prompts]
        for i, p in enumerate(ids):
            if not p:
                raise ValueError(f"input {i} is empty")
            if len(p) > self.max_model_len:
                raise ValueError(f"input {i} has {len(p)} tokens; this model's maximum context length is "
                                 f"{self.max_model_len} tokens")
        return self.runner.embed(ids)

    def stats(self) -> dict:
        """Queue and cache figures for monitoring (read-only; safe to call from another thread)."""
        bm = self.block_manager
        return {
            "waiting": len(self.scheduler.waiting),
            "running": len(self.scheduler.running),
            "kv_cache_usage": 1.0 - bm.num_free_blocks / bm.num_blocks,
            "preemptions": self.scheduler.num_preemptions,
            "prefix_cache_hit_rate": bm.hits / bm.queries if bm.queries else 0.0,
        }

    # ---- convenience ----

    def generate(self, prompts: list[str | list[int]], params: SamplingParams | list[SamplingParams] | None = None
                 ) -> list[RequestOutput]:
        """Run prompts to completion; outputs in prompt order."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, plist, strict=True)]
        final: dict[str, RequestOutput] = {}
        while self.has_unfinished():
            for out in self.step(final_only=True):
                final[out.request_id] = out
        return [final[i] for i in ids]
