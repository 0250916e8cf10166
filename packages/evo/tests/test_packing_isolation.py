"""Packed documents get no cross-document attention: a document's outputs do not depend on its row neighbours."""

import numpy as np
import torch

from shusheng.evo import PackedStream, TokenSource, build_batch
from shusheng.evo.config import DataSection, Source, TrainConfig
from shusheng.evo.train import attention_for
from shusheng.model import build_model


def _row(tmp_path, write_shard, first_doc, name):
    # two documents in one 12-token row; the stream order is fixed by giving each shard a single permutation seed
    docs = [first_doc, [40, 41, 42, 43, 44, 45, 46]]
    write_shard(tmp_path / name, docs)
    stream = PackedStream([TokenSource(str(tmp_path / name))], [1.0], 12, seed=0)
    order = np.random.default_rng([0, 0, 0]).permutation(2).tolist()
    return stream, order


def test_changing_one_document_leaves_the_other_untouched(tmp_path, write_shard):
    cfg = TrainConfig(data=DataSection(sources=[Source("unused")]), steps=1, mixed_precision="fp32")
    model = build_model("tiny", dtype=torch.float32)
    outputs = []
    for i, first in enumerate(([10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24, 25])):
        stream, order = _row(tmp_path, write_shard, first, f"s{i}")
        batch = build_batch(stream, [stream.next_plan()], "documents", (0, 1))
        logits = model(batch.input_ids, attention=attention_for(batch, cfg, torch.device("cpu")))
        outputs.append((batch, logits, order))
    (b0, l0, order), (b1, l1, _) = outputs
    # the shared document (ids 40..46) sits at the same place in both rows
    other = b0.input_ids[0] >= 40
    assert other.sum() >= 5 and torch.equal(other, b1.input_ids[0] >= 40)
    assert not torch.equal(b0.input_ids, b1.input_ids)
    torch.testing.assert_close(l0[0, other], l1[0, other], rtol=0, atol=0)
    # and equal to running that document alone from position 0
    alone = model(b0.input_ids[:, other])
    torch.testing.assert_close(l0[0, other], alone[0], rtol=1e-5, atol=1e-5)
    # the dense causal path (no boundaries) would mix them: the test can tell the difference
    assert order == [0, 1]  # the changed document comes first, so dense attention would leak into the shared one
    dense0, dense1 = model(b0.input_ids), model(b1.input_ids)
    assert not torch.allclose(dense0[0, other], dense1[0, other])
