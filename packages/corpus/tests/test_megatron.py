"""Megatron .bin/.idx: what the writer produces is read back by a reader written here from the format description
(struct + numpy on the raw bytes), independent of `IndexedDatasetReader`."""

import struct
from pathlib import Path

import numpy as np
import pytest

from shusheng.corpus.document import Document
from shusheng.corpus.tokenize import IndexedDatasetReader, IndexedDatasetWriter, load_encoder, token_dtype
from shusheng.corpus.tokenize.pack import tokenize_to_shards

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
INTERNLM2 = DATA / "internlm2_tokenizer.model"

# Megatron's DType codes (megatron/core/datasets/indexed_dataset.py).
CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16}


def read_megatron(prefix) -> tuple[np.dtype, list[np.ndarray], np.ndarray]:
    """(dtype, documents, document_indices), parsed straight from the bytes."""
    raw = Path(f"{prefix}.idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, code, n_seq, n_doc = struct.unpack_from("<QBQQ", raw, 9)
    assert version == 1
    dtype = np.dtype(CODES[code])
    pos = 9 + 8 + 1 + 8 + 8
    lengths = np.frombuffer(raw, "<i4", n_seq, pos)
    pointers = np.frombuffer(raw, "<i8", n_seq, pos + 4 * n_seq)
    doc_idx = np.frombuffer(raw, "<i8", n_doc, pos + 12 * n_seq)
    assert len(raw) == pos + 12 * n_seq + 8 * n_doc  # nothing else in the file
    data = Path(f"{prefix}.bin").read_bytes()
    assert len(data) == int(lengths.sum()) * dtype.itemsize
    seqs = [np.frombuffer(data, dtype, int(n), int(p)) for n, p in zip(lengths, pointers, strict=True)]
    bounds = zip(doc_idx[:-1], doc_idx[1:], strict=True)
    docs = [np.concatenate(seqs[a:b]) if b > a else np.zeros(0, dtype) for a, b in bounds]
    return dtype, docs, doc_idx


def test_writer_bytes_match_format_uint16(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 65536, size=n) for n in (5, 1, 0, 300, 7)]
    with IndexedDatasetWriter(tmp_path / "x", np.uint16) as w:
        for d in docs:
            w.add_document(d)
    dtype, got, doc_idx = read_megatron(tmp_path / "x")
    assert dtype == np.uint16 and struct.unpack_from("<B", (tmp_path / "x.idx").read_bytes(), 17)[0] == 8
    assert doc_idx.tolist() == list(range(len(docs) + 1))  # one sequence per document, boundaries kept
    assert [g.tolist() for g in got] == [d.tolist() for d in docs]
    reader = IndexedDatasetReader(tmp_path / "x")
    assert len(reader) == 5 and reader.num_tokens == 313
    assert [reader[i].tolist() for i in range(5)] == [d.tolist() for d in docs]
    assert reader[-1].tolist() == docs[-1].tolist()
    with pytest.raises(IndexError):
        reader[5]


def test_reader_handles_several_sequences_per_document(tmp_path):
    # A Megatron file written with sentence splitting: 3 sequences, 2 documents ([s0, s1], [s2]), int32 (code 4).
    lengths = np.array([2, 3, 1], "<i4")
    pointers = np.array([0, 8, 20], "<i8")
    doc_idx = np.array([0, 2, 3], "<i8")
    idx = b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 4, 3, 3) + lengths.tobytes() + pointers.tobytes()
    (tmp_path / "m.idx").write_bytes(idx + doc_idx.tobytes())
    (tmp_path / "m.bin").write_bytes(np.arange(6, dtype="<i4").tobytes())
    reader = IndexedDatasetReader(tmp_path / "m")
    assert len(reader) == 2 and reader[0].tolist() == [0, 1, 2, 3, 4] and reader[1].tolist() == [5]


def test_token_dtype_rule():
    assert token_dtype(256) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.int32 and token_dtype(92544) == np.int32


def test_ids_must_fit_dtype(tmp_path):
    w = IndexedDatasetWriter(tmp_path / "x", np.uint16)
    with pytest.raises(ValueError, match="do not fit uint16"):
        w.add_document([1, 70000])
    w.abort()
    with pytest.raises(ValueError, match="no Megatron code"):
        IndexedDatasetWriter(tmp_path / "y", np.uint32)


def test_files_appear_only_complete(tmp_path):
    w = IndexedDatasetWriter(tmp_path / "x", np.uint16)
    w.add_document([1, 2, 3])
    w._bin.flush()
    assert not (tmp_path / "x.bin").exists() and not (tmp_path / "x.idx").exists()  # abandoned before finalize
    w.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), IndexedDatasetWriter(tmp_path / "y", np.uint16) as w2:
        w2.add_document([4])
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


class _ToyEncoder:
    """Bytes as ids (vocab 258, eos 257): a tokenizer whose output is known exactly."""

    vocab_size, bos_id, eos_id = 258, 256, 257

    def encode_batch(self, texts):
        return [list(t.encode()) for t in texts]

    def fingerprint(self):
        return "toy"


def test_packed_small_vocab_is_uint16_with_eos(tmp_path):
    texts = ["hello", "", "wörld", "a" * 50]
    docs = [Document(id=str(i), text=t, source="s") for i, t in enumerate(texts)]
    tokenize_to_shards(docs, _ToyEncoder(), tmp_path, docs_per_shard=100)
    dtype, got, _ = read_megatron(tmp_path / "part-00000")
    assert dtype == np.uint16
    assert [g.tolist() for g in got] == [list(t.encode()) + [257] for t in texts if t]


@pytest.mark.skipif(not INTERNLM2.is_file(), reason=f"InternLM2 tokenizer not found at {INTERNLM2}")
def test_packed_internlm2_is_int32_code_4(tmp_path):
    import sentencepiece as spm

    texts = ["Hello world", "书生·浦语 InternLM2 是一个大语言模型。", "def f(x):\n    return x + 1\n"]
    tokenize_to_shards([Document(id=str(i), text=t) for i, t in enumerate(texts)], load_encoder(INTERNLM2),
                       tmp_path, shard_size_tokens=10**6)
    assert struct.unpack_from("<B", (tmp_path / "part-00000.idx").read_bytes(), 17)[0] == 4
    dtype, got, _ = read_megatron(tmp_path / "part-00000")
    sp = spm.SentencePieceProcessor(model_file=str(INTERNLM2))
    assert dtype == np.int32 and sp.eos_id() == 2
    assert [g.tolist() for g in got] == [sp.encode(t) + [2] for t in texts]
    assert got[0].tolist() == [9843, 2028, 2]
