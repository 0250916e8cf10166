import sys
import types

import pytest

from shusheng.corpus.document import Document, Removed
from shusheng.corpus.stages.safety import Classifier, UrlBlocklist, WordBlocklist, load_callable, url_host


def doc(text="Some text.", **metadata):
    return Document(id="d", text=text, metadata=dict(metadata))


# ---- url_blocklist ----


@pytest.fixture
def domain_file(tmp_path):
    path = tmp_path / "domains.txt"
    path.write_text("# blocked domains\nexample.com\n\n*.bad.org\nhttps://Evil.NET/some/path\n", encoding="utf-8")
    return str(path)


def test_url_host():
    assert url_host("https://WWW.Example.com:8080/a?b=1") == "www.example.com"
    assert url_host("example.com/page") == "example.com"
    assert url_host("*.bad.org") == "bad.org"
    assert url_host("http://[::1") == ""


@pytest.mark.parametrize("url, blocked", [
    ("https://example.com/a", True),
    ("http://www.example.com", True),
    ("https://a.b.example.com/x", True),
    ("https://notexample.com/", False),
    ("https://example.com.cn/", False),
    ("https://bad.org", True),
    ("https://news.bad.org/story", True),
    ("evil.net/landing", True),
    ("https://good.org/", False),
])
def test_url_blocklist_matches_host_and_subdomains(domain_file, url, blocked):
    stage = UrlBlocklist(path=domain_file)
    stage.setup()
    result = stage.process(doc(url=url))
    assert result == (Removed("url_blocklist") if blocked else doc(url=url))


def test_url_blocklist_missing_urls_and_inline_domains():
    stage = UrlBlocklist(domains=["spam.cn"])
    assert stage.process(doc(url="http://www.spam.cn/x")) == Removed("url_blocklist")
    assert stage.process(doc()).text == "Some text."
    assert UrlBlocklist(domains=["spam.cn"], drop_missing_url=True).process(doc()) == Removed("url_missing")
    assert UrlBlocklist(domains=["spam.cn"], url_key="source_url").process(doc(source_url="spam.cn")) == Removed(
        "url_blocklist")


def test_url_blocklist_validation(tmp_path):
    with pytest.raises(ValueError, match="needs `path`"):
        UrlBlocklist()
    with pytest.raises(ValueError, match="domains must be a list"):
        UrlBlocklist(domains="example.com")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        UrlBlocklist(path=str(tmp_path / "missing.txt")).setup()


# ---- word_blocklist ----


@pytest.fixture
def word_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# words\nbadword\nass\nmulti word phrase\n坏词\n", encoding="utf-8")
    return str(path)


def test_word_blocklist_counts(word_file):
    stage = WordBlocklist(path=word_file)
    assert stage.count("A BadWord here, and badword again.") == 2
    assert stage.count("badwords and classic passes do not count") == 0
    assert stage.count("This is a Multi Word Phrase.") == 1
    assert stage.count("这是坏词，那也是坏词。") == 2  # CJK entries match inside running text
    assert stage.count("An English badword在中文里") == 1


def test_word_blocklist_threshold(word_file):
    assert WordBlocklist(path=word_file).process(doc("One badword.")) == Removed("word_blocklist")
    assert WordBlocklist(path=word_file, min_hits=2).process(doc("One badword.")).text == "One badword."
    assert WordBlocklist(path=word_file, min_hits=2).process(doc("坏词 and badword")) == Removed("word_blocklist")
    assert WordBlocklist(words=["spam"]).process(doc("Clean text.")).text == "Clean text."


def test_word_blocklist_validation(tmp_path):
    with pytest.raises(ValueError, match="needs `path`"):
        WordBlocklist()
    with pytest.raises(ValueError, match="min_hits"):
        WordBlocklist(words=["x"], min_hits=0)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="has no entries"):
        WordBlocklist(path=str(empty)).setup()


# ---- classifier ----


@pytest.fixture
def user_module(monkeypatch):
    mod = types.ModuleType("user_scorers")
    mod.length_score = lambda text: len(text) / 100
    mod.not_callable = 3
    monkeypatch.setitem(sys.modules, "user_scorers", mod)
    return mod


def test_classifier_scores_and_thresholds(user_module):
    stage = Classifier(function="user_scorers:length_score", min_score=0.1, max_score=0.5)
    kept = stage.process(doc("x" * 20))
    assert kept.metadata == {"classifier_score": 0.2}
    assert stage.process(doc("x" * 5)) == Removed("classifier_min_score")
    assert stage.process(doc("x" * 80)) == Removed("classifier_max_score")
    toxic = Classifier(function="user_scorers:length_score", max_score=0.3, metadata_key="toxicity")
    assert toxic.process(doc("x" * 30)).metadata == {"toxicity": 0.3}


def test_classifier_validation(user_module):
    with pytest.raises(ValueError, match="function must look like"):
        Classifier(function="user_scorers.length_score", min_score=0.5)
    with pytest.raises(ValueError, match="min_score and/or max_score"):
        Classifier(function="user_scorers:length_score")
    with pytest.raises(ValueError, match=r"min_score \(0.9\) must not exceed max_score \(0.1\)"):
        Classifier(function="user_scorers:length_score", min_score=0.9, max_score=0.1)
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        Classifier(function="no_such_module_xyz:f", min_score=0.5).setup()
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        load_callable("user_scorers:missing", "function")
    with pytest.raises(ValueError, match="is not callable"):
        load_callable("user_scorers:not_callable", "function")
    assert load_callable("operator:add", "function")(2, 3) == 5
