"""Tensor parallelism: the engine over N local GPUs, one process per rank, every rank a full `LLMEngine` in lockstep.

The layout is SGLang's replicated scheduler. Each rank holds its shard of the weights
(`shusheng.model.parallel.shard_tp_local`: whole KV-head groups, slices of the MLP and of the vocabulary) and a KV
pool of its KV heads, and runs the whole engine: scheduler, block manager, runner, sampler. Rank 0 is the engine
the caller sees (`TPEngine`, an `LLMEngine`): it alone takes requests and returns outputs. Before each step it sends
the workers the adds and aborts it has applied since the step before; every rank applies them and steps:

    rank 0 (the caller's process)                       rank r = 1 .. N-1 (spawned, on cuda:r)
    add_request / abort: applied, queued for workers
    step()  ---- ("step", queued commands) pipe --->    apply the commands, LLMEngine.step()
    LLMEngine.step()  <== all-reduce after wo and w2, all-gather of the logits (NCCL / gloo) ==>

The same commands, the same pool size (the smallest of the group) and the same gathered logits give every rank the
same schedule, so their forwards meet in the collectives. Sampling is seeded alike on every rank (the engine seed,
per-request generators), and rank 0's sampled tokens are broadcast after each sample as well: code that draws from
the global RNG in rank 0's process (the caller's) cannot make the ranks diverge.

Commands go over one pipe per worker rather than a collective (`broadcast_object_list`): an idle worker waits on
its pipe as long as the server is idle (a collective would time out), rank 0's exit reaches it as end-of-file, and
a failing worker sends its error back on it. Workers are started with the `spawn` method, so a script that builds
a tensor-parallel engine needs the usual `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import pickle
import signal
import sys
import time
import traceback
import weakref
from dataclasses import dataclass
from multiprocessing import connection as mp_connection
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from shusheng.model import ModelConfig
from shusheng.model.parallel import check_tp, exit_rank
from shusheng.model.tokenizer import Tokenizer

from .config import EngineConfig
from .llm_engine import LLMEngine
from .model_runner import resolve_device
from .outputs import RequestOutput
from .sampler import SamplerOutput, SamplingTensors
from .sampling_params import SamplingParams


def build_engine(config: EngineConfig, tokenizer: Tokenizer | None = None) -> LLMEngine:
    """The engine for `config`: an `LLMEngine`, or a `TPEngine` (its subclass) when tensor_parallel_size > 1."""
    return TPEngine(config, tokenizer) if config.tensor_parallel_size > 1 else LLMEngine(config, tokenizer)


def check_config(config: EngineConfig) -> torch.device:
    """Checks a tensor-parallel config before any process starts; returns the device the ranks use ("cuda"
    for cuda:0 .. cuda:N-1, or "cpu").

    Raises:
        ValueError: the TP degree does not divide the checkpoint's KV heads, MLP or vocabulary, or exceeds the
            visible GPUs.
        FileNotFoundError: no checkpoint folder.
    """
    tp = config.tensor_parallel_size
    check_tp(ModelConfig.from_file(config.model), tp)
    device = resolve_device(config.device)
    if device.type == "cuda" and torch.cuda.device_count() < tp:
        raise ValueError(
            f"tensor_parallel_size {tp} needs {tp} GPUs but {torch.cuda.device_count()} are visible; lower it "
            "(--tp) or make more cards visible (CUDA_VISIBLE_DEVICES)"
        )
    return device


class _RankZeroTokens(nn.Module):
    """The engine's sampler followed by a broadcast of rank 0's tokens (a module swap on every rank)."""

    def __init__(self, sampler: nn.Module, group: dist.ProcessGroup):
        super().__init__()
        self.sampler, self.group = sampler, group

    def forward(self, logits: torch.Tensor, tensors: SamplingTensors, generators=None) -> SamplerOutput:
        out = self.sampler(logits, tensors, generators)
        dist.broadcast(out.token_ids, group=self.group, group_src=0)  # (B,) int64; on the device, no host sync
        return out


def _init_rank(config: EngineConfig, rank: int, store: dist.Store) -> dist.ProcessGroup:
    tp = config.tensor_parallel_size
    if resolve_device(config.device).type == "cuda":
        torch.cuda.set_device(rank)
        dist.init_process_group("nccl", store=store, rank=rank, world_size=tp, device_id=torch.device("cuda", rank))
    else:
        # the ranks share the cores: a full set of (spin-waiting) intra-op threads each would oversubscribe them
        torch.set_num_threads(max(1, torch.get_num_threads() // tp))
        dist.init_process_group("gloo", store=store, rank=rank, world_size=tp)
    return dist.group.WORLD


def _up_key(rank: int) -> str:
    return f"shusheng/tp/rank{rank}/up"


SPAWN_HINT = ("the worker processes are spawned and import the main script: in a script, build the engine under "
              "`if __name__ == \"__main__\":`")


def _share_rank0_tokens(engine: LLMEngine, group: dist.ProcessGroup) -> None:
    engine.sampler = _RankZeroTokens(engine.sampler, group)


def _apply(engine: LLMEngine, commands: list[tuple]) -> None:
    for cmd in commands:
        if cmd[0] == "add":
            engine.add_prepared(*cmd[1:])
        else:  # ("abort", request_id)
            engine.abort(cmd[1])


def _worker_main(config: EngineConfig, tokenizer: Tokenizer | None, rank: int, port: int, conn) -> None:
    """A worker rank: build the engine, report ready, then apply rank 0's commands and step until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; rank 0 stops us
    try:
        store = dist.TCPStore("127.0.0.1", port, config.tensor_parallel_size, is_master=False)
        store.set(_up_key(rank), "1")  # rank 0 waits for this (watching the process) before the collective init
        group = _init_rank(config, rank, store)
        engine = LLMEngine(config, tokenizer, tp_group=group)  # rank 0's tokenizer: the same stop ids and texts
        _share_rank0_tokens(engine, group)
        conn.send(("ready",))
        _serve(engine, conn)
    except BaseException as e:
        traceback.print_exc()  # the whole story in the log; rank 0 reports the last line
        try:
            conn.send(("failed", f"{type(e).__name__}: {e}"))
        except OSError:
            pass
        sys.exit(1)
    engine.runner.release_graphs()  # NCCL's teardown waits until no CUDA graph holds its collectives
    dist.destroy_process_group()  # (not after a failure: with a collective left hanging it could block)
    exit_rank(0)  # no interpreter teardown: gloo's can abort a finished rank


def _serve(engine: LLMEngine, conn) -> None:
    """A worker's loop: rank 0's commands, until it says stop or is gone."""
    while True:
        try:
            msg = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):  # rank 0 is gone
            return
        if msg[0] == "step":
            _, commands, final_only = msg
            _apply(engine, commands)
            engine.step(final_only)
        elif msg[0] == "embed":
            try:
                engine.embed(msg[1])
            except ValueError:  # a bad input: rank 0 raises the same error to its caller, before any collective
                pass
        elif msg[0] == "shutdown":
            return


@dataclass
class _Worker:
    rank: int
    proc: Any  # a spawned process
    conn: Any  # rank 0's end of its pipe


def _stop_workers(workers: list[_Worker], runners: list, timeout: float = 10.0) -> None:
    """Asks every worker to stop, then waits; one that does not (e.g. stuck in a collective) is terminated.

    Rank 0's own process group is destroyed in between, while the workers destroy theirs: NCCL's teardown waits
    for the other ranks, so rank 0 must not wait for the workers to exit first (they would be waiting for it).
    Every rank first frees its CUDA graphs (rank 0's runner is in `runners`): a graph that captured NCCL
    collectives holds the communicator, and the teardown would wait for it forever."""
    workers = [w for w in workers if w.proc.pid is not None]  # started
    for w in workers:
        try:
            w.conn.send_bytes(pickle.dumps(("shutdown",)))
        except OSError:
            pass
    for runner in runners:
        runner.release_graphs()
    if dist.is_initialized():  # (the group is this engine's: TPEngine refuses to start inside another one)
        dist.destroy_process_group()
    for w in workers:
        w.proc.join(timeout)
        if w.proc.is_alive():
            w.proc.terminate()
            w.proc.join(timeout)
        w.conn.close()


class TPEngine(LLMEngine):
    """An `LLMEngine` sharded over `config.tensor_parallel_size` ranks: this process is rank 0 and starts the others
    (see the module docstring). Use it as an `LLMEngine`; `shutdown()` stops the workers (also done at exit).

    Args:
        config: an EngineConfig with tensor_parallel_size >= 2; device "cuda"/"auto" puts rank r on cuda:r (NCCL),
            "cpu" runs every rank on the CPU (gloo).
        tokenizer: override the checkpoint folder's tokenizer (every rank gets it: they must agree on stop ids).

    Raises:
        ValueError: a bad TP degree (see `check_config`), or this process already has a torch.distributed group.
        RuntimeError: a worker rank failed to start (its error is included).
    """

    def __init__(self, config: EngineConfig, tokenizer: Tokenizer | None = None, model=None):
        tp = config.tensor_parallel_size
        if model is not None:
            raise ValueError("tensor parallelism loads its weights from the checkpoint folder on every rank; an "
                             "in-memory model cannot be sharded across processes")
        if tp < 2:
            raise ValueError(f"TPEngine needs tensor_parallel_size >= 2, got {tp}; use LLMEngine on one device")
        check_config(config)
        if dist.is_initialized():
            raise ValueError("tensor parallelism starts its own torch.distributed group, but this process already "
                             "has one; build the engine in a process without it")
        store = dist.TCPStore("127.0.0.1", 0, tp, is_master=True, wait_for_workers=False)
        ctx = mp.get_context("spawn")  # fresh interpreters: CUDA must not be inherited
        self._workers: list[_Worker] = []
        self._runners: list = []  # this rank's runner once built (its graphs are freed before the teardown)
        self._stop = weakref.finalize(self, _stop_workers, self._workers, self._runners)  # also at exit
        self._commands: list[tuple] = []  # applied here since the last step; the workers apply them before it
        self._failure: str | None = None
        try:
            for rank in range(1, tp):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker_main, args=(config, tokenizer, rank, store.port, child),
                                   name=f"shusheng-tp-rank{rank}", daemon=True)
                self._workers.append(_Worker(rank, proc, parent))
                proc.start()
                child.close()
            self._await_workers(store)
            group = _init_rank(config, 0, store)
            super().__init__(config, tokenizer, tp_group=group)
            self._runners.append(self.runner)
            _share_rank0_tokens(self, group)
            for w in self._workers:
                try:
                    msg = w.conn.recv()
                except EOFError:
                    w.proc.join(5)
                    msg = ("failed", f"exited during start-up (exit code {w.proc.exitcode})")
                if msg[0] != "ready":
                    self._failure = f"tensor-parallel rank {w.rank} failed to start: {msg[1]}"
                    raise RuntimeError(self._failure)
        except BaseException as e:
            # a bad config fails alike on every rank: rank 0's error says it; anything else (a broken collective)
            # is explained by the worker that failed first
            own = isinstance(e, (ValueError, OSError, KeyboardInterrupt))
            failure = None if own else self._check_workers(wait=5.0)
            self.shutdown()
            if failure is not None and str(e) != failure:
                raise RuntimeError(failure) from e
            raise

    # ---- the commands rank 0 hands on ----

    def add_prepared(self, request_id: str, text: str | None, ids: list[int], params: SamplingParams) -> None:
        super().add_prepared(request_id, text, ids, params)
        self._commands.append(("add", request_id, text, ids, params))

    def abort(self, request_id: str) -> RequestOutput | None:
        out = super().abort(request_id)
        if out is not None:  # an unknown or finished request is unknown to every rank alike
            self._commands.append(("abort", request_id))
        return out

    def step(self, final_only: bool = False) -> list[RequestOutput]:
        self._send(("step", self._commands, final_only))
        self._commands = []
        try:
            return super().step(final_only)
        except Exception as e:
            failure = self._check_workers(wait=2.0)
            if failure is not None:
                raise RuntimeError(failure) from e
            raise

    def embed(self, prompts: list[str | list[int]]) -> torch.Tensor:
        self._send(("embed", prompts))
        return super().embed(prompts)

    # ---- the workers ----

    def _await_workers(self, store: dist.TCPStore, timeout: float = 600.0) -> None:
        """Waits until every worker has reached the store, watching the processes: one that dies first (often a
        script without a `__main__` guard, which the spawned worker re-runs) is reported at once, where the
        collective init would wait for it for the store's whole timeout."""
        deadline = time.monotonic() + timeout
        waiting = {w.rank: w for w in self._workers}
        while waiting:
            for rank in [r for r in waiting if store.check([_up_key(r)])]:
                del waiting[rank]
            dead = next((w for w in waiting.values() if not w.proc.is_alive()), None)
            if dead is not None:
                self._failure = (f"tensor-parallel rank {dead.rank} exited during start-up (exit code "
                                 f"{dead.proc.exitcode}) before running any engine code; {SPAWN_HINT}")
                raise RuntimeError(self._failure)
            if time.monotonic() > deadline:
                raise RuntimeError(f"tensor-parallel ranks {sorted(waiting)} did not start within {timeout:.0f} s")
            if waiting:
                mp_connection.wait([w.proc.sentinel for w in waiting.values()], 0.05)

    def _send(self, msg: tuple) -> None:
        if not self._stop.alive:
            raise RuntimeError("the tensor-parallel engine is shut down")
        failure = self._check_workers()
        if failure is not None:
            raise RuntimeError(failure)
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        for w in self._workers:
            try:
                w.conn.send_bytes(data)
            except OSError:
                raise RuntimeError(self._check_workers(wait=2.0) or f"tensor-parallel rank {w.rank} is gone") from None

    def _check_workers(self, wait: float = 0.0) -> str | None:
        """The first worker failure (its error, or its exit), else None; once failed, the engine stays failed.

        Args:
            wait: seconds to give a failing worker to report (after an error of rank 0's own).
        """
        workers = [w for w in self._workers if w.proc.pid is not None]  # started
        if self._failure is None:
            if wait and workers:
                mp_connection.wait([w.conn for w in workers] + [w.proc.sentinel for w in workers], wait)
            for w in workers:
                msg = None
                try:
                    if w.conn.poll():
                        msg = w.conn.recv()
                except (EOFError, OSError):
                    pass
                if msg is not None and msg[0] == "failed":
                    self._failure = f"tensor-parallel rank {w.rank} failed: {msg[1]}"
                elif not w.proc.is_alive():
                    self._failure = f"tensor-parallel rank {w.rank} exited (exit code {w.proc.exitcode})"
                if self._failure is not None:
                    break
        return self._failure

    def shutdown(self) -> None:
        """Stops the worker ranks and leaves the process group (idempotent)."""
        self._stop()
