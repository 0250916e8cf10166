import numpy as np
import pytest

from shusheng.evo.data import IGNORE_INDEX, PackedStream, build_batch
from shusheng.evo.shards import Shard, TokenSource, resolve_shards


def test_shard_reads_documents_also_when_split_over_sequences(tmp_path, write_shard):
    docs = [[5, 6, 7], [], [8] * 5, list(range(100, 170))]
    for spd, dtype in ((1, np.uint16), (2, np.int32)):
        write_shard(tmp_path / f"s{spd}", docs, dtype=dtype, seqs_per_doc=spd)
        shard = Shard(tmp_path / f"s{spd}")
        assert list(shard.lengths) == [3, 0, 5, 70]
        for i, d in enumerate(docs):
            assert shard.read(i, 0, len(d)).tolist() == d
        assert shard.read(3, 10, 13).tolist() == [110, 111, 112]


def test_source_path_forms_and_error(tmp_path, write_shard):
    write_shard(tmp_path / "a-0", [[1, 2]])
    write_shard(tmp_path / "a-1", [[3]])
    assert resolve_shards(str(tmp_path)) == [str(tmp_path / "a-0"), str(tmp_path / "a-1")]
    assert resolve_shards(str(tmp_path / "a-1")) == [str(tmp_path / "a-1")]
    assert resolve_shards(str(tmp_path / "a-*.idx")) == [str(tmp_path / "a-0"), str(tmp_path / "a-1")]
    with pytest.raises(FileNotFoundError, match="no token shards at .*give a shard prefix"):
        resolve_shards(str(tmp_path / "missing"))


def _stream(tmp_path, docs, seq_len, seed=0, write_shard=None):
    write_shard(tmp_path / "s", docs)
    return PackedStream([TokenSource(str(tmp_path / "s"))], [1.0], seq_len, seed)


def test_rows_cover_the_stream_in_order_with_one_token_overlap(tmp_path, write_shard):
    docs = [list(range(10 * i + 1, 10 * i + 1 + n)) for i, n in enumerate([3, 7, 1, 9, 4])]  # 24 tokens, distinct
    s = _stream(tmp_path, docs, seq_len=5, write_shard=write_shard)
    rows = [s.read(s.next_plan())[0] for _ in range(10)]  # 10 rows x 5 tokens = 50 = 2 epochs + 2
    flat = np.concatenate([r[:-1] for r in rows])
    for a, b in zip(rows[:-1], rows[1:], strict=True):
        assert a[-1] == b[0]  # each row's extra (label) token starts the next row
    order0 = s.cursors[0].perm().tolist() if s.cursors[0].epoch == 0 else None
    epoch0 = np.concatenate([docs[i] for i in np.random.default_rng([0, 0, 0]).permutation(5)])
    epoch1 = np.concatenate([docs[i] for i in np.random.default_rng([0, 0, 1]).permutation(5)])
    assert flat[:24].tolist() == epoch0.tolist() and flat[24:48].tolist() == epoch1.tolist()
    assert order0 is None  # two epochs were consumed


def test_state_dict_resumes_the_same_rows(tmp_path, write_shard):
    docs = [[i] * (i % 7 + 1) for i in range(1, 40)]
    a = _stream(tmp_path, docs, seq_len=8, seed=3, write_shard=write_shard)
    for _ in range(13):
        a.next_plan()
    state = a.state_dict()
    expected = [a.read(a.next_plan())[0].tolist() for _ in range(20)]
    b = PackedStream([TokenSource(str(tmp_path / "s"))], [1.0], 8, seed=3)
    b.load_state_dict(state)
    assert [b.read(b.next_plan())[0].tolist() for _ in range(20)] == expected


def test_document_packing_masks_cross_document_labels(tmp_path, write_shard):
    docs = [[11, 12, 13], [21, 22], [31, 32, 33, 34, 35, 36]]
    write_shard(tmp_path / "s", docs)
    s = PackedStream([TokenSource(str(tmp_path / "s"))], [1.0], 6, seed=0)
    order = np.random.default_rng([0, 0, 0]).permutation(3)
    stream = np.concatenate([docs[i] for i in order])
    plan = s.next_plan()
    batch = build_batch(s, [plan], "documents", (0, 1))
    x, y = batch.input_ids[0].tolist(), batch.labels[0].tolist()
    assert x == stream[:6].tolist()
    lengths = [len(docs[i]) for i in order]
    ends = set(np.cumsum(lengths)[:-1] - 1)
    for t in range(6):
        assert y[t] == (IGNORE_INDEX if t in ends else stream[t + 1])
    assert sum(batch.doc_lengths) == 6 and all(n > 0 for n in batch.doc_lengths)
    concat = build_batch(s, [s.next_plan()], "concat", (1, 2))
    assert concat.doc_lengths is None and (concat.labels != IGNORE_INDEX).all()


def test_mixture_follows_the_weights_exactly(tmp_path, write_shard):
    write_shard(tmp_path / "a", [[1] * 50] * 10)
    write_shard(tmp_path / "b", [[2] * 50] * 10)
    s = PackedStream([TokenSource(str(tmp_path / "a")), TokenSource(str(tmp_path / "b"))], [3.0, 1.0], 16)
    sources = [s.next_plan().source for _ in range(40)]
    for k in range(0, 40, 4):
        assert sorted(sources[k : k + 4]) == [0, 0, 0, 1]
    assert s.rows_taken == [30, 10]
