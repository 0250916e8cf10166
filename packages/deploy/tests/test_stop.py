"""Tests of shusheng.deploy.stop: stop strings over streamed deltas, stop ids, eos, max/min tokens."""

import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from shusheng.deploy.sampling_params import SamplingParams
from shusheng.deploy.stop import StopChecker
from shusheng.model.tokenizer import IncrementalDetokenizer, load_tokenizer

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "the end of the story is near, then the ending comes",
    "hello world, hello there, the world is wide",
    "a stitch in time saves nine; the early bird catches the worm",
] * 4


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A tiny byte-level BPE (few merges, so most words span several tokens) with <|endoftext|> as eos."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(SENTENCES, trainer)
    folder = tmp_path_factory.mktemp("tok")
    bpe.save(str(folder / "tokenizer.json"))
    tokenizer = load_tokenizer(folder)
    assert tokenizer.eos_id == tokenizer.token_to_id("<|endoftext|>")
    return tokenizer


def stream(tok, ids, params, eos_ids=(), skip_special_tokens=True):
    """Runs ids through detokenizer + checker like the engine: (pieces returned, deltas fed, checker)."""
    detok = IncrementalDetokenizer(tok, skip_special_tokens=skip_special_tokens)
    checker = StopChecker(params, eos_ids)
    pieces, deltas = [], []
    for token_id in ids:
        delta = detok.add(token_id)
        deltas.append(delta)
        text, reason = checker.update(token_id, delta)
        pieces.append(text)
        if reason is not None:
            break
    else:
        pieces.append(checker.flush(detok.flush()))
    assert "".join(pieces) == checker.output_text
    return pieces, deltas, checker


def test_stop_string_spanning_three_tokens(tok):
    text = "hello there, the quick brown fox: Xylophone Zebra! and more text after"
    stop = "Xylophone Zebra"
    pieces, deltas, checker = stream(tok, tok.encode(text), SamplingParams(stop=[stop], max_tokens=None))
    assert "".join(pieces) == text[: text.index(stop)]
    assert (checker.finish_reason, checker.stop_reason) == ("stop", stop)
    # the stop really spans >= 3 deltas, and the checker stopped on the delta that completed it
    begin, received = text.index(stop), 0
    spanning = 0
    for delta in deltas:
        if received + len(delta) > begin:
            spanning += 1
        received += len(delta)
    assert spanning >= 3 and received >= begin + len(stop) > received - len(deltas[-1])


def test_partial_matches_are_held_then_released(tok):
    text = "the end of the story, the ending, then the end! tail"
    stop = "the end!"
    pieces, deltas, checker = stream(tok, tok.encode(text), SamplingParams(stop=stop, max_tokens=None))
    out = "".join(pieces)
    assert out == text[: text.index(stop)] and checker.stop_reason == stop
    # text was held back at some point (a partial "the end") and caught up later: nothing lost
    lag = [len("".join(deltas[: k + 1])) - len("".join(pieces[: k + 1])) for k in range(len(pieces) - 1)]
    assert max(lag) > 0 and 0 in lag[lag.index(max(lag)) :]


def test_include_stop_str_in_output(tok):
    text = "hello world, the quick brown fox jumps"
    params = SamplingParams(stop=["brown f"], include_stop_str_in_output=True, max_tokens=None)
    pieces, _, checker = stream(tok, tok.encode(text), params)
    assert "".join(pieces) == "hello world, the quick brown f" and checker.stop_reason == "brown f"


def test_earliest_stop_wins(tok):
    text = "the quick brown fox jumps over the lazy dog"
    pieces, _, checker = stream(tok, tok.encode(text), SamplingParams(stop=["lazy", "fox", "quick b"]))
    assert "".join(pieces) == "the " and checker.stop_reason == "quick b"


@pytest.mark.parametrize("chunks, tokens", [(["a", "b", "c", "d", "e"], 4), (["abcde"], 1), (["ab", "cde"], 2)])
def test_stop_ending_first_wins_whatever_the_deltas(chunks, tokens):
    # "bcd" ends before "abcde" does; of the two ending at "d", the longer "bcd" wins over "cd"
    checker = StopChecker(SamplingParams(stop=["abcde", "cd", "bcd"], max_tokens=None))
    out = ""
    for i, chunk in enumerate(chunks):
        text, reason = checker.update(i, chunk)
        out += text
        if reason:
            break
    assert (out, reason, checker.stop_reason, checker.num_tokens) == ("a", "stop", "bcd", tokens)


def test_random_splits_match_a_whole_text_reference():
    rng = random.Random(0)
    stops = ["aab", "ba", "abba", "bbb"]
    for _ in range(300):
        text = "".join(rng.choice("ab") for _ in range(rng.randint(1, 12)))
        ends = [(text.find(s) + len(s), -len(s), s) for s in stops if s in text]
        expected = (text[: min(ends)[0] + min(ends)[1]], min(ends)[2]) if ends else (text, None)
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, len(text) - 1)))
        deltas = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        checker = StopChecker(SamplingParams(stop=stops, max_tokens=None))
        out = ""
        for k, delta in enumerate(deltas):
            text_now, reason = checker.update(k, delta)
            out += text_now
            if reason:
                break
        out += checker.flush()
        assert (out, checker.stop_reason) == expected, (text, deltas)


def test_hand_deltas_hold_and_release():
    checker = StopChecker(SamplingParams(stop=["abc"], max_tokens=None))
    assert checker.update(1, "xa") == ("x", None)  # "a" may start "abc"
    assert checker.update(2, "b") == ("", None)
    assert checker.update(3, "d") == ("abd", None)  # no longer a match: released
    assert checker.update(4, "ab") == ("", None)
    assert checker.flush() == "ab" and checker.output_text == "xabdab"


def test_eos_stops_and_its_text_is_not_emitted(tok):
    text = "hello world, the end"
    prefix = tok.encode(text)
    ids = [*prefix, tok.eos_id, *tok.encode(" after eos")]
    pieces, deltas, checker = stream(tok, ids, SamplingParams(max_tokens=None), eos_ids=[tok.eos_id],
                                     skip_special_tokens=False)
    assert deltas[-1] == "<|endoftext|>"
    assert "".join(pieces) == text
    assert (checker.finish_reason, checker.stop_reason, checker.num_tokens) == ("stop", None, len(prefix) + 1)


def test_stop_token_ids(tok):
    ids = tok.encode("the quick brown fox jumps over the lazy dog")
    k = next(k for k in range(5, len(ids)) if ids[k] not in ids[:k])  # first occurrence of its id
    pieces, _, checker = stream(tok, ids, SamplingParams(stop_token_ids=[ids[k]], max_tokens=None))
    assert "".join(pieces) == tok.decode(ids[:k])
    assert (checker.finish_reason, checker.stop_reason, checker.num_tokens) == ("stop", ids[k], k + 1)
    params = SamplingParams(stop_token_ids=[ids[k]], max_tokens=None, include_stop_str_in_output=True)
    assert "".join(stream(tok, ids, params)[0]) == tok.decode(ids[: k + 1])


def test_ignore_eos_runs_to_max_tokens(tok):
    ids = [*tok.encode("hello world"), tok.eos_id, *tok.encode(" and more")]
    pieces, _, checker = stream(tok, ids, SamplingParams(ignore_eos=True, max_tokens=len(ids)), [tok.eos_id])
    assert checker.finish_reason == "length" and checker.num_tokens == len(ids)
    assert "".join(pieces) == "hello world and more"


def test_max_tokens_releases_held_text(tok):
    ids = tok.encode("the quick brown fox jumps over the lazy dog")
    stop = tok.decode(ids[:5])[-3:] + "@@"  # the text after 5 tokens ends in a prefix of the stop: held back
    held = stream(tok, ids[:5], SamplingParams(stop=[stop], max_tokens=6))
    assert "".join(held[0][:-1]) == tok.decode(ids[:5])[:-3]  # without the limit, the tail waits for flush
    pieces, _, checker = stream(tok, ids, SamplingParams(stop=[stop], max_tokens=5))
    assert (checker.finish_reason, checker.stop_reason, checker.num_tokens) == ("length", None, 5)
    assert "".join(pieces) == tok.decode(ids[:5])
    limited = StopChecker(SamplingParams(max_tokens=10), max_tokens=3)  # e.g. the context window's limit
    assert [limited.update(i, "x")[1] for i in range(3)] == [None, None, "length"]
    unlimited = StopChecker(SamplingParams(max_tokens=None))
    assert all(unlimited.update(i, "x") == ("x", None) for i in range(1000))


def test_min_tokens_suppresses_stops():
    params = SamplingParams(stop=["x"], stop_token_ids=[7], min_tokens=2, max_tokens=None)
    checker = StopChecker(params, eos_ids=[9])
    assert checker.update(9, "") == ("", None)  # eos as token 1: ignored
    assert checker.update(1, "ax") == ("ax", None)  # stop string completed on token 2: ignored
    assert checker.update(7, "") == ("", "stop")  # token 3 may stop
    assert checker.stop_reason == 7 and checker.output_text == "ax"
    # a stop string begun during min_tokens and completed after it still counts
    checker = StopChecker(SamplingParams(stop=["xyz"], min_tokens=1, max_tokens=None))
    assert checker.update(1, "ax") == ("a", None)
    assert checker.update(2, "yz tail") == ("", "stop") and checker.output_text == "a"


def test_flush_releases_held_text(tok):
    text = "hello world, the quick brown"
    ids = tok.encode(text)
    params = SamplingParams(stop=["brown bear"], max_tokens=None)
    detok, checker = IncrementalDetokenizer(tok), StopChecker(params)
    out = "".join(checker.update(i, detok.add(i))[0] for i in ids)
    assert out == text[: -len("brown")] and checker.finish_reason is None
    assert checker.flush(detok.flush()) == "brown" and checker.output_text == text


def test_update_after_finish_raises():
    checker = StopChecker(SamplingParams(max_tokens=1))
    assert checker.update(1, "a") == ("a", "length")
    with pytest.raises(RuntimeError, match="already finished"):
        checker.update(2, "b")
    assert checker.flush() == ""


def test_count_stops_where_update_with_text_stops():
    """`count(id)` (the engine's per-token path when it makes the text later) ends a sequence at the same token, for
    the same reasons, as `update(id, text)` does for a sequence without stop strings, whatever its stop ids, eos,
    min_tokens and limits."""
    rng = random.Random(0)
    reasons = set()
    for _ in range(300):
        max_tokens = rng.choice([None, 1, 4, 12])
        params = SamplingParams(max_tokens=max_tokens, min_tokens=rng.choice([0, 0, 1, min(5, max_tokens or 5)]),
                                stop_token_ids=rng.sample(range(6), rng.randint(0, 2)), ignore_eos=rng.random() < 0.3,
                                include_stop_str_in_output=rng.random() < 0.5)
        limit = rng.choice([None, 3, 9])
        counted, updated = StopChecker(params, [2], max_tokens=limit), StopChecker(params, [2], max_tokens=limit)
        for _ in range(20):
            token = rng.randrange(10)
            reason = counted.count(token)
            assert (reason, counted.stop_reason, counted.num_tokens) == \
                (updated.update(token, "w")[1], updated.stop_reason, updated.num_tokens)
            if reason is not None:
                reasons.add(reason)
                with pytest.raises(RuntimeError, match="already finished"):
                    counted.count(token)
                break
    assert reasons == {"stop", "length"}
    with pytest.raises(RuntimeError, match="stop strings"):
        StopChecker(SamplingParams(stop=["x"])).count(1)
