import pytest

from shusheng.corpus.document import Document, Removed
from shusheng.corpus.stages.base import build_stage
from shusheng.corpus.stages.rules import (
    C4Quality,
    CharDistribution,
    FineWebQuality,
    GopherQuality,
    GopherRepetition,
    Length,
    is_cjk_doc,
    split_words,
)

EN = """The history of the printing press is a story of slow change and sudden leaps.
Johannes Gutenberg combined a screw press with movable metal type around 1450, and within fifty years printers were \
working in more than two hundred cities across Europe.
Books became cheaper, and the number of people who could read grew with them.
Scholars have argued that the press helped to spread the ideas of the Reformation and of the scientific revolution.
Others point out that manuscripts and printed books lived side by side for a long time, and that change was uneven."""

ZH = """印刷术是中国古代的四大发明之一。北宋时期，毕昇发明了活字印刷术，比欧洲早了大约四百年。
活字印刷的原理是先制成单个的字模，然后按照稿件排版，印刷完成后还可以拆下来重复使用。
这项技术大大提高了印刷的效率，也降低了书籍的成本，让更多的人有机会读书学习。
后来，活字印刷术传到了朝鲜、日本和欧洲，对世界文明的发展产生了深远的影响。"""

JS = """function add(a, b) {
  return a + b;
}
const total = [1, 2, 3].reduce(add, 0);
console.log(total);"""


def run(stage, text, **metadata):
    return stage.process(Document(id="d", text=text, metadata=dict(metadata)))


def kept(result):
    assert isinstance(result, Document), result
    return result.text


def test_split_words_counts_cjk_characters_as_words():
    assert split_words("Hello, world! 你好，世界。 x=1 ...and (so) on") == [
        "Hello", "world", "你", "好", "世", "界", "x=1", "and", "so", "on"]
    assert len(split_words(EN)) == 96
    assert len(split_words(ZH)) == 146


def test_is_cjk_doc_prefers_metadata():
    words = split_words(ZH)
    assert is_cjk_doc(Document("d", ZH), words)
    assert is_cjk_doc(Document("d", ZH, metadata={"language": "zh"}), words)
    assert is_cjk_doc(Document("d", EN, metadata={"language": "zho_Hans"}), split_words(EN))
    assert not is_cjk_doc(Document("d", ZH, metadata={"language": "en"}), words)


# ---- gopher_quality ----


def test_gopher_quality_keeps_english_and_chinese():
    assert kept(run(GopherQuality(), EN)) == EN
    assert kept(run(GopherQuality(), ZH)) == ZH
    assert kept(run(GopherQuality(), ZH, language="zh")) == ZH
    # Labelled English, the Chinese text fails the word-length rule that CJK documents skip.
    assert run(GopherQuality(), ZH, language="en") == Removed("gopher_min_avg_word_length")


@pytest.mark.parametrize("text, reason", [
    ("Too short to be a real page.", "gopher_min_words"),
    ("", "gopher_min_words"),
    (" ".join(["ab", "cd", "the", "of"] * 15), "gopher_min_avg_word_length"),
    (" ".join(["extraordinarily", "the", "incomprehensible", "counterrevolutionaries"] * 15),
     "gopher_max_avg_word_length"),
    (EN + " #news" * 15, "gopher_hash_ratio"),
    ("\n".join(line + " ..." for line in EN.splitlines()), "gopher_ellipsis_lines"),
    ("\n".join("• " + line for line in EN.splitlines()), "gopher_bullet_lines"),
    (EN + " 1234" * 60, "gopher_alpha_words"),
    (" ".join(["Cheap", "watches", "online", "today", "great", "prices", "fast", "shipping"] * 8), "gopher_stop_words"),
    ("\n".join(JS.splitlines() * 6), "gopher_alpha_words"),  # code: "{", "}", "a+b;" ... have no letters
])
def test_gopher_quality_reasons(text, reason):
    assert run(GopherQuality(), text) == Removed(reason)


def test_gopher_quality_ellipsis_ratio_counts_chinese_ellipsis_once():
    text = EN + " 等等……" * 12  # 12 ellipses / 120 words = 0.1, not above it
    assert kept(run(GopherQuality(), text)) == text
    assert run(GopherQuality(), text + " 等等……") == Removed("gopher_ellipsis_ratio")


def test_gopher_quality_thresholds_can_be_turned_off():
    short = "Too short to be a real page."
    assert run(GopherQuality(), short) == Removed("gopher_min_words")
    assert kept(run(GopherQuality(min_words=None), short)) == short


@pytest.mark.parametrize("kwargs, field", [
    ({"min_words": -1}, "min_words"),
    ({"min_words": 10, "max_words": 5}, "min_words"),
    ({"max_bullet_lines_ratio": 1.5}, "max_bullet_lines_ratio"),
    ({"min_alpha_words_ratio": -0.1}, "min_alpha_words_ratio"),
])
def test_gopher_quality_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GopherQuality(**kwargs)


def test_build_stage_names_the_stage_and_field():
    with pytest.raises(ValueError, match=r"stage 'gopher_quality': min_words must be >= 0"):
        build_stage({"stage": "gopher_quality", "min_words": -5})
    stage = build_stage({"stage": "gopher_repetition", "top_ngrams": [[2, 0.5]]})
    assert stage.top_ngrams == ((2, 0.5),)


# ---- gopher_repetition ----

SENT_A = "We walked to the old mill by the river and sat down to rest for an hour."
SENT_B = "Then we went home before the rain started, and the light over the hills was gone."
SENT_C = "Nobody spoke much on the way back, but everyone agreed it had been a good day."
SENT_D = "My sister still keeps the photograph she took of the mill wheel turning slowly."


def test_gopher_repetition_keeps_english_and_chinese():
    assert kept(run(GopherRepetition(), EN)) == EN
    assert kept(run(GopherRepetition(), ZH)) == ZH


@pytest.mark.parametrize("text, reason", [
    ("\n".join([SENT_A, SENT_A, SENT_A, SENT_A, SENT_B, SENT_C]), "gopher_dup_line_frac"),
    ("\n\n".join([SENT_A, SENT_B, SENT_A]), "gopher_dup_para_frac"),
    ("\n\n".join([SENT_A + " " + SENT_B, "One.", "Two.", "Three.", "Four.", SENT_A + " " + SENT_B]),
     "gopher_dup_para_char_frac"),
    (" ".join(f"Buy now {w}." for w in "alpha beta gamma delta epsilon zeta eta theta".split()), "gopher_top_2_gram"),
    (" ".join([SENT_A] * 3 + [SENT_B]), "gopher_top_4_gram"),
    (" ".join([SENT_A, SENT_B, SENT_C, SENT_A, SENT_D]), "gopher_dup_5_gram"),
    ("\n".join(["", "   "]), "gopher_empty"),
])
def test_gopher_repetition_reasons(text, reason):
    assert run(GopherRepetition(), text) == Removed(reason)


def test_gopher_repetition_measures_chinese_by_characters():
    repeated = "北宋时期，毕昇发明了活字印刷术，比欧洲早了大约四百年。"
    assert run(GopherRepetition(), ZH.replace("\n", "") + repeated * 2) == Removed("gopher_dup_5_gram")


def test_gopher_repetition_validation():
    with pytest.raises(ValueError, match="top_ngrams"):
        GopherRepetition(top_ngrams=[[2, 1.5]])
    with pytest.raises(ValueError, match="dup_ngrams"):
        GopherRepetition(dup_ngrams=[5, 0.1])
    with pytest.raises(ValueError, match="max_dup_line_frac"):
        GopherRepetition(max_dup_line_frac=2)


# ---- c4_quality ----


def test_c4_drops_lines_and_keeps_the_page():
    text = "\n".join([
        "Home | About | Contact",
        "The museum opened in 1902 and holds more than ten thousand objects.[1]",
        "Please enable JavaScript to view the map of the galleries.",
        "Visitors can see the collection every day except Monday.",
        "Read our privacy policy before buying tickets online.",
        "The building itself was designed by a local architect.[citation needed]",
        "Guided tours start at ten in the morning and at two in the afternoon!",
        "Is photography allowed? Yes, but without a flash.",
        "Ok.",
        "More to come...",
    ])
    assert kept(run(C4Quality(), text)) == "\n".join([
        "The museum opened in 1902 and holds more than ten thousand objects.",
        "Visitors can see the collection every day except Monday.",
        "The building itself was designed by a local architect.",
        "Guided tours start at ten in the morning and at two in the afternoon!",
        "Is photography allowed? Yes, but without a flash.",
    ])


def test_c4_keeps_english_and_chinese_prose():
    assert kept(run(C4Quality(), EN)) == EN
    assert kept(run(C4Quality(), ZH)) == ZH


@pytest.mark.parametrize("text, reason", [
    (EN + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", "c4_lorem_ipsum"),
    (EN + "\nThe set {1, 2, 3} has three elements.", "c4_curly_bracket"),
    ("One sentence here.\nAnd a second one here.", "c4_min_sentences"),
    (JS, "c4_min_sentences"),
])
def test_c4_reasons(text, reason):
    assert run(C4Quality(), text) == Removed(reason)


def test_c4_validation():
    with pytest.raises(ValueError, match="max_word_length"):
        C4Quality(max_word_length=0)
    with pytest.raises(ValueError, match="min_sentences"):
        C4Quality(min_sentences=-1)


# ---- fineweb_quality ----


def test_fineweb_keeps_english_and_chinese_prose():
    assert kept(run(FineWebQuality(), EN)) == EN
    assert kept(run(FineWebQuality(), ZH)) == ZH
    assert kept(run(FineWebQuality(), EN.replace("\n", "\n\n"))) == EN.replace("\n", "\n\n")  # blank lines ignored


@pytest.mark.parametrize("text, reason", [
    ("\n".join(["Home", "Products and services overview", "Contact our sales team today", "Careers at the company",
                "Investor relations", "Press releases and news", "Store locator", "Gift cards", SENT_A]),
     "fineweb_line_punct_ratio"),
    ("Yes.\nNo.\nMaybe so.\nWho knows?\n" + SENT_A, "fineweb_short_line_ratio"),
    ("\n".join([SENT_A, SENT_B, SENT_C, SENT_D, SENT_A]), "fineweb_char_dup_ratio"),
    ("\n".join(["Supercalifragilistic antidisestablishmentarianism.",
                "Pneumonoultramicroscopic floccinaucinihilipilification.",
                "Incomprehensibilities counterrevolutionaries!"]), "fineweb_list_ratio"),
    (JS, "fineweb_line_punct_ratio"),
    ("\n \n", "fineweb_empty"),
])
def test_fineweb_reasons(text, reason):
    assert run(FineWebQuality(), text) == Removed(reason)


def test_fineweb_options():
    no_punct = "Home\nProducts and services overview page\nContact our sales team today please\n"
    assert run(FineWebQuality(), no_punct) == Removed("fineweb_line_punct_ratio")
    assert kept(run(FineWebQuality(line_punct_exclude_zero=True), no_punct)) == no_punct
    with pytest.raises(ValueError, match="char_dup_ratio"):
        FineWebQuality(char_dup_ratio=1.1)
    with pytest.raises(ValueError, match="short_line_length"):
        FineWebQuality(short_line_length=0)


# ---- length ----


def test_length():
    assert kept(run(Length(), EN)) == EN  # 96 words, within Gopher's 50..100,000
    assert kept(run(Length(min_words=100), ZH)) == ZH  # 146 Han characters = 146 words
    assert run(Length(min_words=200), ZH) == Removed("length_min_words")
    assert run(Length(max_words=50), EN) == Removed("length_max_words")
    assert run(Length(min_chars=1000), EN) == Removed("length_min_chars")
    assert run(Length(max_chars=100, min_words=None), EN) == Removed("length_max_chars")
    assert kept(run(Length(min_chars=1, min_words=None, max_words=None), "x")) == "x"
    with pytest.raises(ValueError, match="min_chars"):
        Length(min_chars=10, max_chars=5)
    with pytest.raises(ValueError, match="max_words"):
        Length(max_words=-1)


# ---- char_distribution ----


def test_char_distribution():
    assert kept(run(CharDistribution(), EN)) == EN
    assert kept(run(CharDistribution(), ZH)) == ZH
    assert run(CharDistribution(), JS) == Removed("char_punct_ratio")
    assert run(CharDistribution(), "Invoice 2024-001: 1234567 units, 9876543 total, 555 left.") == Removed(
        "char_digit_ratio")
    assert run(CharDistribution(), "Caf\ufffd menu \ufffd\ufffd prices") == Removed("char_abnormal_ratio")
    assert run(CharDistribution(), " \n ") == Removed("char_empty")
    assert kept(run(CharDistribution(max_punct_ratio=None), JS)) == JS
    with pytest.raises(ValueError, match="max_digit_ratio"):
        CharDistribution(max_digit_ratio=3)
