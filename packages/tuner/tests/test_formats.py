"""Data formats are detected from their keys and converted; files load from json, jsonl, parquet and `datasets`."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shusheng.model.chat import render
from shusheng.tuner.config import Source
from shusheng.tuner.data import (
    Conversation,
    DataError,
    Preference,
    Text,
    detect_format,
    load_records,
    load_source,
    parse_records,
)
from shusheng.tuner.data.synthetic import write_jsonl

CALL = {"name": "weather", "arguments": {"city": "Paris"}}


@pytest.mark.parametrize("record,fmt", [
    ({"instruction": "Hi", "input": "", "output": "Hello"}, "alpaca"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, "messages"),
    ({"conversations": [{"from": "human", "value": "Hi"}]}, "sharegpt"),
    ({"text": "Once upon a time"}, "text"),
    ({"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}, "preference"),
    ({"messages": [{"role": "user", "content": "Hi"}], "chosen": "Hello", "rejected": "No"}, "preference"),
    ({"question": "Hi", "answer": "Hello"}, None),
])
def test_detect_format(record, fmt):
    assert detect_format(record) == fmt


def test_alpaca_with_input_history_and_system():
    r = {"instruction": "Translate", "input": "chat", "output": "cat", "system": "You translate.",
         "history": [["Hello?", "Hi!"]]}
    (ex,) = parse_records([r], "f").examples
    assert ex == Conversation([
        {"role": "system", "content": "You translate."},
        {"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Translate\n\nchat"}, {"role": "assistant", "content": "cat"}])


def test_sharegpt_tool_turns_become_openai_messages():
    r = {"system": "Use tools.", "tools": json.dumps([{"name": "weather", "parameters": {}}]), "conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "gpt", "value": "Checking."},
        {"from": "function_call", "value": json.dumps(CALL)},
        {"from": "observation", "value": '{"temp": 21}'},
        {"from": "gpt", "value": "21 degrees."}]}
    (ex,) = parse_records([r], "f").examples
    assert ex.tools == [{"name": "weather", "parameters": {}}]
    roles = [m["role"] for m in ex.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert ex.messages[2]["content"] == "Checking." and ex.messages[2]["tool_calls"][0]["function"] == CALL
    assert ex.messages[3]["tool_call_id"] == ex.messages[2]["tool_calls"][0]["id"]
    text = render("internlm2", ex.messages, tools=ex.tools, add_generation_prompt=False)
    assert 'Checking.<|action_start|><|plugin|>\n{"name": "weather", "parameters": {"city": "Paris"}}' in text
    assert "<|im_start|>environment name=<|plugin|>\n{\"temp\": 21}<|im_end|>" in text


def test_openai_messages_keep_tool_calls_and_drop_columnar_nulls():
    call = {"id": "c0", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    r = {"messages": [{"role": "user", "content": "Weather?", "tool_calls": None, "name": None},
                      {"role": "assistant", "content": None, "tool_calls": [call]},
                      {"role": "tool", "content": "21", "tool_call_id": "c0"}], "tools": None}
    (ex,) = parse_records([r], "f").examples
    assert ex.messages[0] == {"role": "user", "content": "Weather?"}
    assert ex.messages[1] == {"role": "assistant", "tool_calls": [call]} and ex.tools is None


def test_preference_forms():
    (a, b, c) = parse_records([
        {"prompt": "Q", "chosen": "good", "rejected": "bad", "domain": "chat"},
        {"prompt": [{"role": "user", "content": "Q"}], "chosen": {"role": "assistant", "content": "good"},
         "rejected": [{"role": "assistant", "content": "bad"}], "system": "S"},
        {"messages": [{"role": "user", "content": "Q"}], "chosen": "good", "rejected": "bad"}], "f").examples
    assert a == Preference([{"role": "user", "content": "Q"}], [{"role": "assistant", "content": "good"}],
                           [{"role": "assistant", "content": "bad"}], domain="chat")
    assert b.prompt[0] == {"role": "system", "content": "S"} and b.chosen == a.chosen and b.rejected == a.rejected
    assert c.prompt == a.prompt


def test_errors_name_the_file_record_and_keys():
    with pytest.raises(DataError, match=r"data.jsonl record 0 fits no known format \(keys: \['answer', 'question'\]\)"):
        parse_records([{"question": "q", "answer": "a"}], "data.jsonl")
    with pytest.raises(DataError, match=r"f record 1 does not fit the file's alpaca format \(keys: \['text'\]\)"):
        parse_records([{"instruction": "a", "output": "b"}, {"text": "c"}], "f")
    with pytest.raises(DataError, match=r"f record 0 \(sharegpt\): conversations\[0\].from: 'robot' is not one of"):
        parse_records([{"conversations": [{"from": "robot", "value": "x"}]}], "f")
    with pytest.raises(DataError, match="f record 0 \\(preference\\): chosen must end with an assistant message"):
        parse_records([{"prompt": "q", "chosen": [{"role": "user", "content": "x"}], "rejected": "y"}], "f")


def test_local_files(tmp_path):
    records = [{"text": "a"}, {"text": "b"}]
    write_jsonl(tmp_path / "d.jsonl", records)
    (tmp_path / "d.json").write_text(json.dumps(records))
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in records))  # JSON lines named .json
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.json", "lines.json", "d.parquet"):
        assert load_records(Source(str(tmp_path / name))) == records
    assert load_records(Source(str(tmp_path / "d.jsonl"), limit=1)) == records[:1]
    parsed = load_source(Source(str(tmp_path / "d.parquet")))
    assert parsed.format == "text" and parsed.examples == [Text("a"), Text("b")]


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_records(Source(str(tmp_path / "missing.jsonl")))
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown suffix '.csv'"):
        load_records(Source(str(tmp_path / "d.csv")))
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_records(Source(str(tmp_path / "bad.jsonl")))


def test_hub_loading_goes_through_datasets(tmp_path, monkeypatch):
    """`hf:` sources use `datasets.load_dataset`; a local dataset folder exercises it without a download."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)])
    records = load_records(Source(f"hf:{folder}", split="train", limit=3))
    assert records == [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(3)]
    with pytest.raises(DataError, match="hub dataset .* failed to load"):
        load_records(Source(f"hf:{tmp_path / 'nothing_here'}"))
