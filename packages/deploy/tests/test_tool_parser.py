"""Streaming tool-call parsing: any split of the reply into deltas gives the non-streaming parse."""

import json
import random

import pytest

from shusheng.deploy.server.tool_parser import ToolStreamParser
from shusheng.model.chat import parse

INTERNLM2_REPLY = ('Let me check.<|action_start|><|plugin|>\n{"name": "get_weather", "parameters": {"city": "Paris"}}'
                   '<|action_end|>')
LLAMA3_REPLY = '{"name": "get_weather", "parameters": {"city": "Paris"}}'


def stream(template, text, seed):
    rng = random.Random(seed)
    parser, content, calls, i = ToolStreamParser(template), "", [], 0
    while i < len(text):
        j = min(len(text), i + rng.randint(1, 7))
        c, k = parser.feed(text[i:j])
        content, calls, i = content + c, calls + k, j
    c, k = parser.finish()
    return content + c, calls + k


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("template,text", [("internlm2", INTERNLM2_REPLY), ("llama3", LLAMA3_REPLY),
                                           ("internlm2", "plain answer, <|action no call")])
def test_any_split_matches_the_full_parse(template, text, seed):
    content, calls = stream(template, text, seed)
    full = parse(template, text)
    assert content.strip() == full.content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in full.tool_calls]
    assert [c["index"] for c in calls] == list(range(len(calls)))


def test_internlm2_content_streams_before_the_call():
    parser = ToolStreamParser("internlm2")
    assert parser.feed("Let me ") == ("Let me ", [])
    assert parser.feed("check.<|action_") == ("check.", [])  # a possible marker start is held back
    assert parser.feed('start|><|plugin|>\n{"name": "f", ') == ("", [])
    content, calls = parser.feed('"parameters": {}}<|action_end|>')
    assert content == "" and calls[0]["function"]["name"] == "f" and calls[0]["id"] == "call_0"
