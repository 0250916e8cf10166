"""Training metrics: a JSONL log (always), TensorBoard (optional), a progress line with ETA, a loss-curve PNG.

Only rank 0 writes. On resume the log keeps the records up to the resumed step and drops the rest, so the file
always describes one consistent run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends one JSON object per record to `path`; mirrors scalars to TensorBoard when `tensorboard_dir` is set.

    Args:
        path: the JSONL file.
        resume_step: drop existing records with "step" > resume_step (None: start a new file).
        tensorboard_dir: a folder for TensorBoard event files (needs the `tensorboard` package).
        enabled: False on ranks other than 0 (every call becomes a no-op).
    """

    def __init__(self, path: str | Path, resume_step: int | None = None, tensorboard_dir: str | Path | None = None,
                 enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.path)
        self._file = self.path.open("a")
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("tensorboard logging needs `pip install tensorboard`; or unset tensorboard_dir"
                                   ) from e
            self._tb = SummaryWriter(str(tensorboard_dir))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record, default=_jsonable) + "\n")
        self._file.flush()
        if self._tb is not None and "step" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self._tb.add_scalar(k.replace(".", "/"), v, record["step"])

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


def _jsonable(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else str(v)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class Progress:
    """A one-line progress display with rate and ETA, redrawn in place on a terminal, printed every
    `every` steps otherwise (logs)."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, every: int = 10, stream=None):
        self.total, self.start, self.enabled, self.every = total, start, enabled, every
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, step: int, **fields: Any) -> None:
        if not self.enabled or (not self.tty and step % self.every and step != self.total):
            return
        done = step - self.start
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (self.total - step) if done else math.nan
        parts = [f"step {step}/{self.total}"] + [f"{k} {_fmt(v)}" for k, v in fields.items()]
        parts.append(f"eta {_hms(eta)}")
        line = " | ".join(parts)
        self.stream.write(("\r" + line + " " * 4) if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def plot_loss_curve(records: list[dict[str, Any]], path: str | Path, title: str = "loss") -> Path | None:
    """Train (and validation, when logged) loss against step as a PNG; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
