"""Shared fixtures: Megatron shards written here by hand (the format, without importing shusheng-corpus) and a
learnable synthetic corpus: arithmetic progressions modulo the vocabulary, each ending with EOS."""

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

EOS = 2
VOCAB = 512


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _write_shard(prefix: Path, docs: list, dtype=np.uint16, seqs_per_doc: int = 1) -> Path:
    """Write `prefix.bin/.idx` in MMIDIDX v1; with seqs_per_doc=2 each document is stored as two sequences."""
    codes = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}
    seqs, doc_idx = [], [0]
    for d in docs:
        d = np.asarray(d, dtype=dtype)
        parts = np.array_split(d, seqs_per_doc) if seqs_per_doc > 1 else [d]
        seqs.extend(parts)
        doc_idx.append(len(seqs))
    lengths = np.array([len(s) for s in seqs], np.int32)
    pointers = np.concatenate([[0], np.cumsum(lengths[:-1].astype(np.int64) * np.dtype(dtype).itemsize)])
    Path(str(prefix) + ".bin").write_bytes(b"".join(s.tobytes() for s in seqs))
    header = struct.pack("<9sQBQQ", b"MMIDIDX\x00\x00", 1, codes[np.dtype(dtype)], len(seqs), len(doc_idx))
    Path(str(prefix) + ".idx").write_bytes(header + lengths.tobytes() + pointers.astype(np.int64).tobytes()
                                           + np.asarray(doc_idx, np.int64).tobytes())
    return prefix


def progressions(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        # counting in steps of 1-3 modulo 48 over ids 3..50: learnable by the tiny model in a few dozen steps
        start, step, length = rng.integers(0, 48), rng.integers(1, 4), rng.integers(6, 40)
        docs.append(list((start + step * np.arange(length)) % 48 + 3) + [EOS])
    return docs


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("shards")
    (root / "train").mkdir()
    _write_shard(root / "train" / "part-00000", progressions(300, 0))
    _write_shard(root / "train" / "part-00001", progressions(300, 1))
    _write_shard(root / "val", progressions(60, 2))
    return {"train": str(root / "train"), "val": str(root / "val")}


def _write_config(path: Path, corpus: dict, **top) -> Path:
    cfg = {
        "model": {"preset": "tiny"},
        "data": {"sources": [{"path": corpus["train"]}], "validation": corpus["val"]},
        "seq_len": 64,
        "micro_batch": 4,
        "steps": 40,
        "optim": {"lr": 3e-3, "warmup_steps": 4},
        "mixed_precision": "fp32",
        "output": str(path.parent / "run"),
        "eval_batches": 2,
        "device": "cpu",
    }
    for k, v in top.items():
        node = cfg
        *parents, last = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def write_shard():
    return _write_shard


@pytest.fixture(scope="session")
def write_config():
    return _write_config
