"""Readers and writers: jsonl / jsonl.gz, parquet, plain-text folders, Hugging Face datasets.

Every record becomes a `Document` with an id (the record's, or `FILE:LINE`), its source and metadata. Writers write to
a temporary name and rename when complete, so a reader never sees half a file.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .document import Document

TEXT_SUFFIXES = (".txt", ".md", ".rst")
DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".parquet")


def _kind(path: Path) -> str:
    name = path.name
    for s in DATA_SUFFIXES + TEXT_SUFFIXES:
        if name.endswith(s):
            return s
    return ""


def list_inputs(spec: str | list[str]) -> list[Path]:
    """Input files from paths, folders (data files inside, sorted) and globs; errors name what was not found."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    files: list[Path] = []
    for s in specs:
        p = Path(s)
        if any(ch in s for ch in "*?["):
            matched = sorted(Path().glob(s)) if not p.is_absolute() else sorted(Path(p.anchor).glob(s[1:]))
            if not matched:
                raise FileNotFoundError(f"input pattern {s!r} matches no file")
            files += [m for m in matched if m.is_file()]
        elif p.is_dir():
            data = sorted(f for f in p.rglob("*") if f.is_file() and _kind(f) in DATA_SUFFIXES)
            files += data or sorted(f for f in p.rglob("*") if f.is_file() and _kind(f) in TEXT_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"input {s!r} does not exist")
    if not files:
        raise FileNotFoundError(f"no input files in {specs} (jsonl, jsonl.gz, parquet, or .txt/.md files)")
    return files


def read_file(path: str | Path, text_key: str = "text", id_key: str = "id") -> Iterator[Document]:
    """Documents of one file; a .txt/.md/.rst file is one document."""
    path = Path(path)
    kind = _kind(path)
    source = str(path)
    if kind in TEXT_SUFFIXES:
        yield Document(id=path.stem, text=path.read_text(encoding="utf-8", errors="replace"), source=source)
        return
    if kind == ".parquet":
        import pyarrow.parquet as pq

        for i, rec in enumerate(pq.read_table(path).to_pylist()):
            doc = Document.from_dict(rec, text_key, id_key, source)
            doc.id = doc.id or f"{path.stem}:{i}"
            yield doc
        return
    if kind not in (".jsonl", ".jsonl.gz", ".json.gz"):
        raise ValueError(f"{path}: unknown input format; use .jsonl, .jsonl.gz, .parquet, .txt or .md")
    opener = gzip.open if kind.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i + 1}: not valid JSON ({e.msg})") from None
            doc = Document.from_dict(rec, text_key, id_key, source)
            doc.id = doc.id or f"{path.stem}:{i}"
            yield doc


def read_hf(name: str, split: str = "train", text_key: str = "text", **kwargs) -> Iterator[Document]:
    """A Hugging Face dataset through `datasets` (the `hf` extra): a hub name, a local folder, or a builder such
    as "json" with `data_files=...`; `kwargs` go to `datasets.load_dataset`."""
    try:
        import datasets
    except ImportError:
        raise ImportError("reading Hugging Face datasets needs `pip install shusheng-corpus[hf]`") from None
    for i, rec in enumerate(datasets.load_dataset(name, split=split, **kwargs)):
        doc = Document.from_dict(rec, text_key, "id", source=f"hf:{name}")
        doc.id = doc.id or f"{name}:{i}"
        yield doc


class ShardWriter:
    """Stream documents to jsonl / jsonl.gz under a temporary name; `close()` renames it into place.

    As a context manager it closes on success and deletes the temporary file on an exception.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        opener = gzip.open if self.path.name.endswith(".gz") else open
        self._f = opener(self.tmp, "wt", encoding="utf-8")
        self.count = 0

    def write(self, doc: Document) -> None:
        self._f.write(json.dumps(doc.to_dict(), ensure_ascii=False) + "\n")
        self.count += 1

    def close(self) -> None:
        self._f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._f.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort() if exc_type else self.close()


def write_documents(docs: Iterable[Document], path: str | Path) -> int:
    """Write jsonl / jsonl.gz / parquet (by suffix) atomically; returns the number of documents."""
    path = Path(path)
    if path.name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        rows = [d.to_dict() for d in docs]
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, path)
        return len(rows)
    with ShardWriter(path) as w:
        for d in docs:
            w.write(d)
    return w.count


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write a file under a temporary name, then rename it: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def write_json(path: str | Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
