import sys
import types
import zlib

import numpy as np
import pytest

from shusheng.corpus.document import Document, Removed
from shusheng.corpus.stages.quality import HashedNgramClassifier, LongContext, QualityScore, Scorer, load_scorer

GOOD = "research results method analysis evidence study theory experiment data model measured observed".split()
BAD = "click buy free casino bonus winner cheap offer deal discount subscribe lottery prize".split()
ZH_GOOD = "研究 结果 方法 分析 证据 理论 实验 数据 模型 测量".split()
ZH_BAD = "点击 购买 免费 赌场 奖金 便宜 优惠 折扣 订阅 彩票".split()
COMMON = "the a of and to in is it for on with 的 了 是".split()


def make(rng, vocab, n, length=30):
    return [" ".join(rng.choice(vocab + COMMON, size=length)) for _ in range(n)]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    train = make(rng, GOOD, 30) + make(rng, ZH_GOOD, 10) + make(rng, BAD, 30) + make(rng, ZH_BAD, 10)
    labels = [1] * 40 + [0] * 40
    held_out = make(rng, GOOD, 10) + make(rng, ZH_GOOD, 5) + make(rng, BAD, 10) + make(rng, ZH_BAD, 5)
    return train, labels, held_out, [1] * 15 + [0] * 15


@pytest.fixture(scope="module")
def model(data):
    train, labels, _, _ = data
    return HashedNgramClassifier(num_buckets=2**16).train(train, labels)


def test_features_are_stable_hashed_ngrams():
    m = HashedNgramClassifier(num_buckets=1000, ngrams=2)
    idx, val = m.features("Good data, good data")
    expected = sorted({zlib.crc32(g.encode()) % 1000 for g in ["good", "data", "good data", "data good"]})
    assert idx.tolist() == expected
    assert np.isclose(np.linalg.norm(val), 1.0)
    assert [len(a) for a in m.features("")] == [0, 0]


def test_classifier_separates_held_out_items(model, data):
    _, _, held_out, truth = data
    scores = model.score(held_out)
    assert [int(s > 0.5) for s in scores] == truth
    assert min(scores[:15]) > 0.6 and max(scores[15:]) < 0.4
    assert isinstance(model, Scorer)


def test_save_load_round_trip(model, data, tmp_path):
    path = tmp_path / "quality.bin"  # no ".npz" appended
    model.save(path)
    loaded = HashedNgramClassifier.load(path)
    assert (loaded.num_buckets, loaded.ngrams) == (2**16, 2)
    assert loaded.score(data[2]) == model.score(data[2])
    bad = tmp_path / "other.npz"
    np.savez(bad, weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a HashedNgramClassifier file"):
        HashedNgramClassifier.load(bad)
    with pytest.raises(FileNotFoundError):
        HashedNgramClassifier.load(tmp_path / "missing.bin")


def test_training_validation():
    m = HashedNgramClassifier(num_buckets=16)
    with pytest.raises(ValueError, match="as many labels as texts"):
        m.train(["a", "b"], [1])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        m.train(["a", "b"], [1, 2])
    with pytest.raises(ValueError, match="ngrams"):
        HashedNgramClassifier(ngrams=0)


def test_quality_score_stage_with_a_model_file(model, tmp_path):
    path = tmp_path / "quality.bin"
    model.save(path)
    stage = QualityScore(model=str(path))
    stage.setup()
    good = stage.process(Document("d", "the study measured the evidence and the data of the experiment"))
    assert good.metadata["quality_score"] > 0.5
    assert stage.process(Document("d", "click for a free casino bonus and a cheap lottery prize")) == Removed(
        "quality_score")
    annotate_only = QualityScore(model=str(path), min_score=None)
    assert annotate_only.process(Document("d", "free casino bonus")).metadata["quality_score"] < 0.5


class Constant:
    def __init__(self, value=0.25):
        self.value = value

    def score(self, texts):
        return [self.value] * len(texts)


def test_quality_score_stage_with_a_user_scorer(monkeypatch):
    mod = types.ModuleType("user_quality")
    mod.Constant = Constant
    mod.make = lambda: Constant(0.75)
    mod.instance = Constant(0.5)
    monkeypatch.setitem(sys.modules, "user_quality", mod)
    assert load_scorer("user_quality:Constant").score(["a"]) == [0.25]
    assert load_scorer("user_quality:make").score(["a"]) == [0.75]
    assert load_scorer("user_quality:instance") is mod.instance
    stage = QualityScore(scorer="user_quality:make", min_score=0.8, metadata_key="edu_score")
    removed = Document("d", "text")
    assert stage.process(removed) == Removed("quality_score")
    assert removed.metadata == {"edu_score": 0.75}
    assert QualityScore(scorer=Constant(0.9)).process(Document("d", "x")).metadata == {"quality_score": 0.9}
    mod.not_a_scorer = lambda: 3
    mod.number = 3
    with pytest.raises(ValueError, match="gave int, which has no score"):
        load_scorer("user_quality:not_a_scorer")
    with pytest.raises(ValueError, match="gave int, which has no score"):
        load_scorer("user_quality:number")


def test_quality_score_validation():
    with pytest.raises(ValueError, match="exactly one of model"):
        QualityScore()
    with pytest.raises(ValueError, match="exactly one of model"):
        QualityScore(model="m.bin", scorer="a:b")
    with pytest.raises(ValueError, match="scorer must look like"):
        QualityScore(scorer="user_quality.make")


# ---- long_context ----

PARAGRAPH = ("Chapter {i}. The expedition left the coast at dawn and followed the river inland for many days, "
             "mapping each bend and village, and the notes of that journey fill the rest of this book.")


def long_text(n=30):
    return "\n".join(PARAGRAPH.format(i=i) for i in range(n))


def test_long_context_selection(monkeypatch):
    text = long_text()  # 30 distinct lines, ~5.8K characters
    stage = LongContext(min_chars=4000)
    assert stage.process(Document("d", text)).text == text
    assert stage.process(Document("d", text[:3000])) == Removed("long_context_min_chars")
    repeated = "\n".join([PARAGRAPH.format(i=0)] * 30)
    assert stage.process(Document("d", repeated)) == Removed("long_context_dup_lines")
    table = "\n".join(f"{i} | {i * 17} | {i * 31} | {i * 7 % 13} | {i ** 2} | {i * 3}" for i in range(300))
    assert stage.process(Document("d", table)) == Removed("long_context_alpha_ratio")


def test_long_context_ppl_diff_hook(monkeypatch):
    mod = types.ModuleType("user_ppl")
    mod.gain = lambda text: 0.5 if "Chapter 29" in text else 0.01
    monkeypatch.setitem(sys.modules, "user_ppl", mod)
    stage = LongContext(min_chars=4000, ppl_diff_scorer="user_ppl:gain", min_ppl_diff=0.1)
    assert stage.process(Document("d", long_text())).metadata == {"long_context_ppl_diff": 0.5}
    assert stage.process(Document("d", long_text(29) + "\n" + long_text(5))) == Removed("long_context_ppl_diff")


def test_long_context_validation():
    with pytest.raises(ValueError, match="min_ppl_diff needs a ppl_diff_scorer"):
        LongContext(min_ppl_diff=0.1)
    with pytest.raises(ValueError, match="ppl_diff_scorer must look like"):
        LongContext(ppl_diff_scorer="no_colon")
    with pytest.raises(ValueError, match="max_dup_line_frac"):
        LongContext(max_dup_line_frac=1.5)
    with pytest.raises(ValueError, match="min_chars"):
        LongContext(min_chars=-1)
