"""Reading records: local .json / .jsonl / .parquet files, and Hugging Face hub datasets through `datasets`.

A source path starting with `hf:` names a hub dataset (`hf:tatsu-lab/alpaca`); anything else is a local file. Hub
datasets go through `datasets.load_dataset(name, subset, split=...)`, which also reads a local dataset folder
(`hf:/data/my_dataset`) and honours `HF_DATASETS_OFFLINE` and the usual cache settings.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import Source
from .formats import DataError, Records, parse_records

HUB_PREFIX = "hf:"
SUFFIXES = (".json", ".jsonl", ".parquet")


def load_records(source: Source) -> list[dict]:
    """The raw records of one source (dicts), at most `source.limit` of them.

    Raises:
        DataError: a missing file, an unknown suffix, malformed JSON (with its line), or a hub dataset that fails
            to load.
    """
    if source.path.startswith(HUB_PREFIX):
        records = _hub_records(source)
    else:
        records = _file_records(Path(source.path))
    return records if source.limit is None else records[: source.limit]


def load_source(source: Source) -> Records:
    """Records of one source, converted to examples (`formats.parse_records`)."""
    return parse_records(load_records(source), source.path)


def _file_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if path.suffix not in SUFFIXES:
        raise DataError(f"data file {path}: unknown suffix {path.suffix!r}; use one of {', '.join(SUFFIXES)} "
                        f"or {HUB_PREFIX}owner/name for a hub dataset")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises its own ArrowInvalid / OSError family
            raise DataError(f"data file {path} is not a readable parquet file: {e}") from None
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # "Extra data": JSON lines saved as .json, read them as such below
                raise DataError(f"data file {path} is not valid JSON: {e}") from None
        else:
            if not isinstance(data, list):
                raise DataError(f"data file {path} must hold a JSON list of records, got {type(data).__name__}")
            return data
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"data file {path} line {n} is not valid JSON: {e}") from None
    return records


def _hub_records(source: Source) -> list[dict]:
    import datasets

    name = source.path[len(HUB_PREFIX) :]
    split = source.split if source.limit is None else f"{source.split}[:{source.limit}]"
    try:
        ds = datasets.load_dataset(name, source.subset, split=split)
    except Exception as e:  # network, missing dataset or split: one message, not a traceback from deep inside
        raise DataError(f"hub dataset {name!r} (subset {source.subset}, split {split}) failed to load: {e}") from None
    return [dict(r) for r in ds]
