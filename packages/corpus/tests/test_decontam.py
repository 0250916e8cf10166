import json

import pytest

from shusheng.corpus.document import Document, Removed
from shusheng.corpus.stages.base import build_stage
from shusheng.corpus.stages.decontam import Decontaminate, read_benchmark_texts

QUESTION = ("which of the following statements best describes the main reason that the early printing press changed "
            "how ideas spread across europe")  # 22 words
ANSWER = "books became much cheaper and could be copied faster than any scribe was ever able to write them out"
CHOICE = "the screw press was first used for pressing olives and grapes long before anyone printed a book with it"
LINE = "a train leaves the station at nine in the morning and travels at sixty miles per hour toward the coast"
FILLER = "our newsletter covers gardening tips seasonal recipes and local events for the whole family every week"


@pytest.fixture
def files(tmp_path):
    jsonl = tmp_path / "mmlu.jsonl"
    records = [{"question": QUESTION, "answer": ANSWER, "choices": [CHOICE, "paris"], "id": 1},
               {"question": "Short one?", "answer": "Paris"}]
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    txt = tmp_path / "gsm.txt"
    txt.write_text(LINE + "\n\n")
    return [str(jsonl), str(txt)]


def words(text, lo, hi):
    return " ".join(text.split()[lo:hi])


def test_read_benchmark_texts(files):
    assert read_benchmark_texts(files[0], ["question", "choices"]) == [QUESTION, CHOICE, "paris", "Short one?"]
    assert read_benchmark_texts(files[1], ["ignored"]) == [LINE]


def test_drops_exactly_the_documents_sharing_a_13_gram(files):
    stage = build_stage({"stage": "decontaminate", "benchmark_files": files,
                         "fields": ["question", "answer", "choices"]})
    stage.setup()
    q = QUESTION.split()
    docs = {
        # 13 consecutive question words inside other text, with different case, punctuation and line breaks.
        "q13": f"{FILLER}. " + " ".join(w.upper() if i % 3 else w + "," for i, w in enumerate(q[4:17])) + f"\n{FILLER}",
        "q12": f"{FILLER} {words(QUESTION, 4, 16)} {FILLER}",  # only 12 words
        "gap": f"{FILLER} {' '.join(q[4:10] + ['mostly'] + q[11:17])} {FILLER}",  # 13 words with one changed
        "line": f"Homework: {words(LINE, 2, 15)}?",  # a 13-gram of a plain-text benchmark line
        "choice": f"{words(CHOICE, 0, 13)} {FILLER}",  # a 13-gram of one element of a list field
        "seam": f"{words(QUESTION, 16, 22)} {words(ANSWER, 0, 7)}",  # spans two fields: not a benchmark 13-gram
        "short": "Paris",  # a short answer is not an n-gram: no match
        "clean": FILLER,
    }
    removed = set()
    for doc_id, text in docs.items():
        result = stage.process(Document(id=doc_id, text=text))
        if isinstance(result, Removed):
            assert result.reason == "decontam"
            removed.add(doc_id)
        else:
            assert result.text == text
    assert removed == {"q13", "line", "choice"}


def test_min_overlap_counts_distinct_ngrams(files):
    stage = Decontaminate(benchmark_files=files, fields=["question"], min_overlap=2)
    one = Document(id="a", text=words(QUESTION, 0, 13))
    two = Document(id="b", text=words(QUESTION, 0, 14))  # two distinct 13-grams
    twice = Document(id="c", text=words(QUESTION, 0, 13) + " and again " + words(QUESTION, 0, 13))
    assert stage.process(one) is one and stage.process(twice) is twice
    assert stage.process(two) == Removed("decontam")


def test_configuration_errors(tmp_path, files):
    with pytest.raises(ValueError, match="benchmark_files is empty"):
        build_stage({"stage": "decontaminate"})
    with pytest.raises(ValueError, match="must be >= 1"):
        Decontaminate(benchmark_files=files, ngram_size=0)
    with pytest.raises(ValueError, match="has no option"):
        build_stage({"stage": "decontaminate", "benchmark_files": files, "n": 8})
    stage = Decontaminate(benchmark_files=files, fields=["prompt"])
    with pytest.raises(ValueError, match=r"no record has a text field among \['prompt'\]"):
        stage.setup()
