"""From the config's data section to packed train and eval rows: load -> convert -> split -> render -> pack."""

from __future__ import annotations

import random
from dataclasses import dataclass

from shusheng.model import Tokenizer
from shusheng.model.chat import get_template

from ..config import DataArgs, RewardArgs
from .formats import Conversation, DataError, Example, Preference, Text
from .load import load_source
from .pack import PackReport, Unit, pack
from .render import encode, encode_pair


@dataclass
class Prepared:
    """Packed rows for training and evaluation, with what packing did to each."""

    train: list[list[Unit]]
    eval: list[list[Unit]]
    train_report: PackReport
    eval_report: PackReport | None
    formats: dict[str, str]  # source -> detected format

    def summary(self) -> str:
        lines = [f"data: {', '.join(f'{k} ({v})' for k, v in self.formats.items())}",
                 f"train: {self.train_report.summary()}"]
        if self.eval_report is not None:
            lines.append(f"eval: {self.eval_report.summary()}")
        return "\n".join(lines)


def resolve_template(name: str | None, tokenizer: Tokenizer) -> str:
    """The configured template, else the tokenizer's, else internlm2 (raises ValueError for an unknown name)."""
    name = name or tokenizer.chat_template or "internlm2"
    return get_template(name).name


def prepare(
    data: DataArgs, task: str, tokenizer: Tokenizer, template: str, seed: int = 0, reward: RewardArgs | None = None
) -> Prepared:
    """Loads, renders and packs the training (and held-out) data for `task` ("sft", "dpo" or "reward").

    Raises:
        DataError: unreadable sources, records of the wrong kind for the task, or over-long samples under
            `overflow="error"`.
    """
    formats: dict[str, str] = {}
    train = _examples(data.train, task, formats)
    held = _examples(data.eval, task, formats) if data.eval else []
    if not data.eval and data.eval_fraction > 0:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n = max(1, round(len(train) * data.eval_fraction))
        if n >= len(train):
            raise DataError(f"data.eval_fraction={data.eval_fraction} leaves no training records of {len(train)}")
        held_idx = set(order[:n])
        held = [train[i] for i in sorted(held_idx)]
        train = [e for i, e in enumerate(train) if i not in held_idx]
    units = [_unit(e, where, task, tokenizer, template, data, reward) for e, where in train]
    rows, report = pack(units, data.max_length, data.overflow)
    if not rows:
        raise DataError(f"no training samples left after packing: {report.summary()}")
    eval_rows, eval_report = [], None
    if held:
        eval_units = [_unit(e, where, task, tokenizer, template, data, reward) for e, where in held]
        eval_rows, eval_report = pack(eval_units, data.max_length, data.overflow)
    return Prepared(rows, eval_rows, report, eval_report, formats)


def _examples(sources, task: str, formats: dict[str, str]) -> list[tuple[Example, str]]:
    out = []
    for source in sources:
        records = load_source(source)
        formats[source.path] = records.format
        wants_pairs = task in ("dpo", "reward")
        if wants_pairs != (records.format == "preference"):
            need = "preference records (prompt or messages, chosen, rejected)" if wants_pairs else \
                "conversations or text (alpaca, messages, sharegpt, text)"
            raise DataError(f"task {task} needs {need}, but {source.path} holds {records.format} records")
        out += [(e, records.where(i)) for i, e in enumerate(records.examples)]
    return out


def _unit(example: Example, where: str, task: str, tokenizer: Tokenizer, template: str, data: DataArgs,
          reward: RewardArgs | None) -> Unit:
    if isinstance(example, (Conversation, Text)):
        return (encode(example, tokenizer, template, data.train_on, data.system, where),)
    assert isinstance(example, Preference)
    has_system = bool(example.prompt) and example.prompt[0].get("role") == "system"
    system = None if has_system else data.system
    if task == "reward" and reward is not None and reward.domains:
        domain = example.domain or reward.default_domain
        if domain not in reward.domains:
            raise DataError(f"{where}: domain {domain!r} has no condition prompt; reward.domains has "
                            f"{sorted(reward.domains)} (or set reward.default_domain)")
        system = reward.domains[domain]
    return encode_pair(example, tokenizer, template, system, where)
