"""Packing: every sample's tokens come out once with their boundaries; the over-long policy is applied and counted."""

import random

import pytest
import torch

from shusheng.model import build_model
from shusheng.model.loss import IGNORE_INDEX
from shusheng.tuner.data import DataError, Sample, collate, pack


def samples(lengths: list[int], seed: int = 0) -> list[tuple[Sample, ...]]:
    rng = random.Random(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = [rng.randrange(3, 500) for _ in range(n)]
        trained = [j >= 3 for j in range(n)]  # all but a 3-token "prompt" trained
        out.append((Sample(ids, trained, f"record {i}"),))
    return out


def unpack(rows) -> list[list[int]]:
    """Documents as they come out of the batches: the row's ids cut at the batch's boundaries."""
    docs = []
    for row in rows:
        batch = collate(row)
        ids = batch.input_ids[0].tolist()
        assert sum(batch.lengths) == len(ids)
        s = 0
        for n in batch.lengths:
            docs.append(ids[s : s + n])
            s += n
    return docs


def test_every_sample_comes_out_once_with_its_boundaries():
    rng = random.Random(1)
    units = samples([rng.randrange(4, 200) for _ in range(300)])
    rows, report = pack(units, max_length=256)
    assert sorted(map(tuple, unpack(rows))) == sorted(tuple(u[0].ids) for u in units)  # N in, N out, intact
    assert all(sum(len(d) for u in row for d in u) <= 256 for row in rows)
    assert report.units == report.packed == 300 and report.truncated == report.dropped == report.untrained == 0
    assert report.tokens == sum(len(u[0]) for u in units)
    assert report.rows == len(rows) and 0.95 < report.efficiency <= 1.0  # best fit leaves little room unused
    assert report.trained_tokens == sum(u[0].num_trained for u in units)


def test_labels_never_cross_a_boundary():
    units = samples([5, 7, 4])
    batch = collate(units)
    labels, ids = batch.labels[0].tolist(), batch.input_ids[0].tolist()
    for k, (s, e) in enumerate(((0, 5), (5, 12), (12, 16))):
        doc = units[k][0]
        assert labels[e - 1] == IGNORE_INDEX  # each document's last token predicts nothing
        assert labels[s : e - 1] == [t if m else IGNORE_INDEX for t, m in zip(doc.ids[1:], doc.trained[1:],
                                                                                strict=True)]
        assert ids[s:e] == doc.ids
    assert batch.num_trained == sum(u[0].num_trained for u in units)


def test_packed_row_equals_documents_run_alone():
    """Varlen attention: no attention across samples, positions restart per sample."""
    model = build_model("tiny", seed=3).eval()
    units = samples([9, 4, 12], seed=2)
    batch = collate(units)
    with torch.no_grad():
        packed = model(batch.input_ids, attention=batch.attention(torch.float32))[0]
        alone = torch.cat([model(torch.tensor([u[0].ids]))[0] for u in units])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("policy", ["truncate", "drop"])
def test_overlong_policy_is_applied_and_reported(policy):
    units = samples([50, 300, 120, 260, 10])
    rows, report = pack(units, max_length=128, overflow=policy)
    docs = unpack(rows)
    kept = [u[0].ids for u in units if len(u[0]) <= 128]
    if policy == "truncate":
        assert report.truncated == 2 and report.dropped == 0 and report.packed == 5
        kept += [u[0].ids[:128] for u in units if len(u[0]) > 128]  # the first max_length tokens
    else:
        assert report.dropped == 2 and report.truncated == 0 and report.packed == 3
    assert sorted(map(tuple, docs)) == sorted(map(tuple, kept))
    assert report.longest == 300
    assert f"{report.truncated} truncated, {report.dropped} dropped" in report.summary()


def test_overlong_error_names_the_count_and_the_first():
    with pytest.raises(DataError, match=r"2 of 5 samples are longer than max_length=128 \(first: record 1, 300 tokens"):
        pack(samples([50, 300, 120, 260, 10]), max_length=128, overflow="error")


def test_pairs_stay_together_and_truncation_that_leaves_no_reply_is_reported():
    rng = random.Random(0)
    pairs = []
    for i, (a, b) in enumerate([(30, 40), (120, 20), (10, 10), (90, 90)]):
        pairs.append(tuple(Sample([rng.randrange(3, 500) for _ in range(n)], [j >= n - 5 for j in range(n)],
                                  f"pair {i}") for n in (a, b)))
    rows, report = pack(pairs, max_length=128, overflow="truncate")
    # (120, 20) and (90, 90) exceed 128: each document is cut to 64 tokens, which removes the replies (last 5 tokens)
    assert report.truncated == 2 and report.untrained == 2 and report.packed == 2
    assert "2 removed with no trained tokens" in report.summary()
    for row in rows:
        batch = collate(row)
        assert batch.num_units == len(row) and len(batch.lengths) == 2 * len(row)
