import sys
import types

import pytest

from shusheng.corpus.document import Document, Removed
from shusheng.corpus.stages.language import LanguageId, code_score, detect_language

EN = ("The history of the printing press is a story of slow change and sudden leaps. Books became cheaper, and "
      "the number of people who could read grew with them.")
ZH = "印刷术是中国古代的四大发明之一。北宋时期，毕昇发明了活字印刷术，比欧洲早了大约四百年。"
PY = '''def fibonacci(n: int) -> list[int]:
    """Return the first n Fibonacci numbers."""
    seq = [0, 1]
    while len(seq) < n:
        seq.append(seq[-1] + seq[-2])
    return seq[:n]
'''
JS = """function add(a, b) {
  return a + b;
}
const total = [1, 2, 3].reduce(add, 0);
console.log(total);"""
C = """#include <stdio.h>

int main(void) {
    printf("hello\\n");
    return 0;
}"""


@pytest.mark.parametrize("text, label, score", [
    (EN, "en", 1.0),
    (ZH, "zh", 1.0),
    ("我用Python写了一个小程序，它可以自动下载网页。", "zh", 0.9474),  # 18 Han characters, 1 Latin word
    ("これは日本語の文章です。ひらがなとカタカナが含まれています。", "ja", 1.0),
    ("Le chat est sur la table et il dort depuis ce matin avec le chien.", "other", 1.0),
    ("Привет, как дела? Всё хорошо.", "other", 1.0),
    ("12345 67890 !!!", "unknown", 0.0),
    ("", "unknown", 0.0),
])
def test_detect_natural_languages(text, label, score):
    assert detect_language(text) == (label, score)


@pytest.mark.parametrize("text", [PY, JS, C])
def test_detect_code(text):
    label, score = detect_language(text)
    assert label == "code" and 0.5 <= score <= 1.0


def test_code_score_separates_prose_from_code():
    assert code_score(EN) < 0.1 and code_score(ZH) < 0.1
    assert min(code_score(PY), code_score(JS), code_score(C)) > 0.6


def test_stage_writes_metadata_and_filters():
    doc = LanguageId().process(Document("d", ZH))
    assert doc.metadata == {"language": "zh", "language_score": 1.0}
    stage = LanguageId(keep=["en", "zh"], min_score=0.95)
    assert stage.process(Document("d", EN)).metadata["language"] == "en"
    removed = Document("d", JS)
    assert stage.process(removed) == Removed("language")
    assert removed.metadata["language"] == "code"  # labelled even when dropped
    assert stage.process(Document("d", "我用Python写了一个小程序，它可以自动下载网页。")) == Removed("language_score")


def test_validation():
    with pytest.raises(ValueError, match="keep must be a list"):
        LanguageId(keep="en")
    with pytest.raises(ValueError, match="min_score"):
        LanguageId(min_score=1.5)
    with pytest.raises(ValueError, match="code_threshold"):
        LanguageId(code_threshold=-0.1)


def test_fasttext_missing_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "fasttext", None)  # makes `import fasttext` raise ImportError
    stage = LanguageId(fasttext_model="lid.176.bin")  # nothing is imported at construction
    with pytest.raises(ImportError, match="fasttext_model is set but the `fasttext` package is not installed"):
        stage.setup()


def test_fasttext_model_labels_prose_and_code_stays_builtin(monkeypatch):
    loaded = []

    class FakeModel:
        def predict(self, text, k=1):
            assert "\n" not in text and k == 1
            return ("__label__zh",), [0.875]

    fake = types.SimpleNamespace(load_model=lambda path: loaded.append(path) or FakeModel())
    monkeypatch.setitem(sys.modules, "fasttext", fake)
    stage = LanguageId(fasttext_model="/models/lid.176.bin", keep=["zh"])
    stage.setup()
    doc = stage.process(Document("d", ZH + "\n" + ZH))
    assert doc.metadata == {"language": "zh", "language_score": 0.875}
    assert stage.process(Document("d", PY)) == Removed("language")  # "code" from the built-in code score
    assert loaded == ["/models/lid.176.bin"]
