"""Small synthetic tasks with a known answer, for smoke tests, examples and tiny CPU runs.

- `color_records`: an instruction task, "Color 3?" -> "pink" (8 numbers, 2 phrasings), in Alpaca form. A random
  model cannot do it; greedy generation after SFT shows whether it was learned.
- `parity_pairs`: a preference that depends on the prompt, "Is 37 even?" preferring "no" over "yes", for DPO and
  reward models; held-out numbers test that the preference generalizes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

COLORS = ["red", "blue", "green", "pink", "gray", "gold", "teal", "navy"]


def color_prompts() -> list[tuple[str, str]]:
    """Every (instruction, answer) of the color task."""
    return [(q, COLORS[k]) for k in range(len(COLORS)) for q in (f"Color {k}?", f"Which color is {k}?")]


def color_records(n: int, seed: int = 0) -> list[dict]:
    """`n` Alpaca records of the color task, drawn at random."""
    rng = random.Random(seed)
    prompts = color_prompts()
    return [{"instruction": q, "output": a} for q, a in (rng.choice(prompts) for _ in range(n))]


def parity_pairs(numbers: list[int]) -> list[dict]:
    """Preference records: the right answer to "Is N even?" is chosen, the wrong one rejected."""
    return [{"prompt": f"Is {n} even?", "chosen": "yes" if n % 2 == 0 else "no",
             "rejected": "no" if n % 2 == 0 else "yes"} for n in numbers]


def write_jsonl(path: str | Path, records: list[dict]) -> Path:
    """Writes records as JSON lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path
