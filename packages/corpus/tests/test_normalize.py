import pytest

from shusheng.corpus.document import Document, Removed
from shusheng.corpus.stages.base import build_stage
from shusheng.corpus.stages.normalize import Normalize, fix_mojibake, normalize_text


def run(stage, text):
    return stage.process(Document(id="d", text=text))


def test_english_whitespace_and_control_characters():
    raw = ("\ufeff\n\nCafe\u0301 menu:\u00a0 today\r\n"  # BOM, leading blank lines, combining accent, NBSP, CRLF
           "Soup\u200b of the\u2009day\t \x00\x07\r\r"  # zero-width space, thin space, trailing tab, NUL, BEL, CR CR
           "Bread\u2028Tea\u00ad time\x0cEnd   \n\n\n")  # line separator, soft hyphen, form feed, trailing blanks
    doc = run(Normalize(), raw)
    assert doc.text == "Café menu:  today\nSoup of the day\n\nBread\nTea time\nEnd"


def test_chinese_nfc_keeps_full_width_and_nfkc_folds_it():
    text = "全角，标点！（测试）\u3000ＡＢＣ１２３"
    assert run(Normalize(), text).text == "全角，标点！（测试） ＡＢＣ１２３"  # only the ideographic space changes
    assert run(Normalize(form="NFKC"), text).text == "全角,标点!(测试) ABC123"
    assert run(Normalize(form=None), "Cafe\u0301").text == "Cafe\u0301"


def test_code_keeps_indentation_and_newlines():
    code = "def f(x):  \r\n\tif x:\r\n\t\treturn  1\r\n\r\n\r\n    return 0\r\n"
    assert run(Normalize(), code).text == "def f(x):\n\tif x:\n\t\treturn  1\n\n\n    return 0"
    assert run(Normalize(collapse_spaces=True), code).text == "def f(x):\n\tif x:\n\t\treturn 1\n\n\n    return 0"


def test_mojibake_is_fixed_only_when_asked():
    broken = "cafÃ© â€œquotedâ€\x9d itâ€™s ä¸\xadæ–‡ naïve"
    assert fix_mojibake(broken) == "café “quoted” it’s 中文 naïve"
    assert run(Normalize(fix_mojibake=True), broken).text == "café “quoted” it’s 中文 naïve"
    # Off by default: only the control and invisible characters of the broken text go (\x9d, soft hyphen \xad).
    assert run(Normalize(), broken).text == "cafÃ© â€œquotedâ€ itâ€™s ä¸æ–‡ naïve"
    assert fix_mojibake("Ã(") == "Ã("  # not a UTF-8 sequence: left alone


def test_empty_documents():
    assert run(Normalize(), " \u200b\n\t\r\n") == Removed("normalize_empty")
    assert run(Normalize(drop_empty=False), " \u200b\n\t\r\n").text == ""


def test_validation():
    with pytest.raises(ValueError, match="form must be 'NFC', 'NFKC' or None"):
        Normalize(form="NFD")
    with pytest.raises(ValueError, match="stage 'normalize': form"):
        build_stage({"stage": "normalize", "form": "nfc"})
    assert build_stage({"stage": "normalize", "form": "NFKC"}) == Normalize(form="NFKC")


def test_normalize_text_is_idempotent():
    raw = "A\u00a0B\r\nC\u3000D  \n\n\u200bE\x85F"
    once = normalize_text(raw, "NFKC", True, True)
    assert once == "A B\nC D\n\nE\nF"
    assert normalize_text(once, "NFKC", True, True) == once
