"""Chat template tests: exact renders, exact ids on the real InternLM2 tokenizer, trainable masks, parsing, errors."""

import json

import pytest
from tokenizers import Tokenizer as HFRaw
from tokenizers import decoders, models, pre_tokenizers, trainers

from shusheng.model.chat import Template, get_template, list_templates, parse, register_template, render, render_ids
from shusheng.model.chat import templates as templates_module
from shusheng.model.chat.templates import Segment
from shusheng.model.tokenizer import load_tokenizer

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What's the weather in Shanghai?"},
    {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {"id": "call_abc", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Shanghai"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_abc", "content": '{"temperature": 22}'},
    {"role": "assistant", "content": "It is 22 °C in Shanghai."},
]
TOOLS_JSON = """[
    {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {
                    "type": "string"
                }
            },
            "required": [
                "city"
            ]
        }
    }
]"""
CALL_JSON = '{"name": "get_weather", "parameters": {"city": "Shanghai"}}'
EXPECTED_INTERNLM2 = (
    "<s><|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>system name=<|plugin|>\n" + TOOLS_JSON + "<|im_end|>\n"
    "<|im_start|>user\nWhat's the weather in Shanghai?<|im_end|>\n"
    "<|im_start|>assistant\nLet me check.<|action_start|><|plugin|>\n" + CALL_JSON + "<|action_end|><|im_end|>\n"
    '<|im_start|>environment name=<|plugin|>\n{"temperature": 22}<|im_end|>\n'
    "<|im_start|>assistant\nIt is 22 °C in Shanghai.<|im_end|>\n"
)
ASSISTANT_TURNS = [
    "Let me check.<|action_start|><|plugin|>\n" + CALL_JSON + "<|action_end|><|im_end|>",
    "It is 22 °C in Shanghai.<|im_end|>",
]
SIMPLE = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}]},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]



def _spans(tok, ids, mask):
    """Decoded runs of trainable tokens."""
    spans, run = [], []
    for i, m in zip(ids, mask, strict=True):
        if m:
            run.append(i)
        elif run:
            spans, run = [*spans, tok.decode(run)], []
    return spans + ([tok.decode(run)] if run else [])


def test_internlm2_tool_conversation_renders_exactly():
    assert render("internlm2", CONVERSATION, tools=[WEATHER_TOOL], add_generation_prompt=False) == EXPECTED_INTERNLM2
    # Plain function dicts declare the same way; the generation prompt opens an assistant turn.
    text = render("internlm2", CONVERSATION, tools=[WEATHER_TOOL["function"]])
    assert text == EXPECTED_INTERNLM2 + "<|im_start|>assistant\n"


def test_internlm2_tool_conversation_ids(tok, sp_ref):
    ids, mask = render_ids("internlm2", tok, CONVERSATION, tools=[WEATHER_TOOL])
    assert ids == tok.encode(EXPECTED_INTERNLM2)
    # Special tokens are single ids; the text between them is plain SentencePiece.
    start, end, plugin, act_start, act_end, nl = 92543, 92542, 92538, 92541, 92540, sp_ref.encode("\n")
    expected = [
        1, start, *sp_ref.encode("system\nYou are a helpful assistant."), end, *nl,
        start, *sp_ref.encode("system name="), plugin, *sp_ref.encode("\n" + TOOLS_JSON), end, *nl,
        start, *sp_ref.encode("user\nWhat's the weather in Shanghai?"), end, *nl,
        start, *sp_ref.encode("assistant\nLet me check."), act_start, plugin, *sp_ref.encode("\n" + CALL_JSON),
        act_end, end, *nl,
        start, *sp_ref.encode("environment name="), plugin, *sp_ref.encode('\n{"temperature": 22}'), end, *nl,
        start, *sp_ref.encode("assistant\nIt is 22 °C in Shanghai."), end, *nl,
    ]  # fmt: skip
    assert ids == expected
    assert len(mask) == len(ids)


def test_internlm2_trainable_mask_covers_exactly_the_assistant_turns(tok):
    ids, mask = render_ids("internlm2", tok, CONVERSATION, tools=[WEATHER_TOOL])
    assert _spans(tok, ids, mask) == ASSISTANT_TURNS
    assert sum(mask) == sum(len(tok.encode(t)) for t in ASSISTANT_TURNS)
    header = tok.encode("<|im_start|>assistant\n")
    for k in (i for i in range(len(ids)) if mask[i] and not mask[i - 1]):  # each trainable span's start
        assert ids[k - len(header) : k] == header and not any(mask[k - len(header) : k])
    for k in (i for i in range(len(ids) - 1) if mask[i] and not mask[i + 1]):  # each span's end
        assert ids[k] == 92542 and tok.decode([ids[k + 1]]) == "\n" and not mask[k + 1]
    assert mask[0] is False and ids[0] == 1


def test_internlm2_generation_prompt_ids(tok):
    ids, mask = render_ids("internlm2", tok, CONVERSATION[:2], add_generation_prompt=True)
    assert ids == tok.encode(render("internlm2", CONVERSATION[:2]))
    assert ids[-4:] == [92543, *tok.encode("assistant\n")] and not any(mask)


def test_render_ids_equals_encode_when_text_merges_across_segments(tok):
    # "assistant\n" + "\n\nHi" tokenizes with a "\n\n..." piece spanning the header/content boundary.
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\n\nHi"}]
    ids, mask = render_ids("internlm2", tok, messages)
    assert ids == tok.encode(render("internlm2", messages, add_generation_prompt=False))
    assert "".join(_spans(tok, ids, mask)).endswith("Hi<|im_end|>")


def test_internlm2_parse_recovers_the_rendered_tool_call():
    reply = ASSISTANT_TURNS[0]
    for text in (reply, reply.removesuffix("<|im_end|>")):
        parsed = parse("internlm2", text)
        assert parsed.content == "Let me check."
        assert parsed.tool_calls == [
            {"id": "call_0", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Shanghai"}'}}
        ]
    # The parsed reply, appended to the conversation, renders the same turn again.
    again = render("internlm2", [*CONVERSATION[:2], parse("internlm2", reply).to_message()], [WEATHER_TOOL], False)
    assert again.endswith("<|im_start|>assistant\n" + reply + "\n")


def test_internlm2_code_interpreter():
    python_tool = {"type": "function", "function": {"name": "python", "description": "Run Python code."}}
    messages = [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "python", "arguments": {"code": "print(1 + 1)"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "2"},
        {"role": "assistant", "content": "2"},
    ]
    text = render("internlm2", messages, tools=[python_tool, WEATHER_TOOL], add_generation_prompt=False)
    assert text == (
        "<s><|im_start|>system name=<|interpreter|>\nRun Python code.<|im_end|>\n"
        "<|im_start|>system name=<|plugin|>\n" + TOOLS_JSON + "<|im_end|>\n"
        "<|im_start|>user\n1+1?<|im_end|>\n"
        "<|im_start|>assistant\n<|action_start|><|interpreter|>\n```python\nprint(1 + 1)\n```<|action_end|><|im_end|>\n"
        "<|im_start|>environment name=<|interpreter|>\n2<|im_end|>\n"
        "<|im_start|>assistant\n2<|im_end|>\n"
    )
    parsed = parse("internlm2", "Running it.\n<|action_start|><|interpreter|>\n```python\nx = 1\nprint(x)\n```"
                                "<|action_end|>\n<|im_end|>")
    assert parsed.content == "Running it."
    assert parsed.tool_calls[0]["function"] == {"name": "python", "arguments": '{"code": "x = 1\\nprint(x)"}'}


def test_internlm2_native_roles_and_names():
    messages = [
        {"role": "user", "content": "See the file."},
        {"role": "user", "name": "file", "content": '[{"path": "data.csv"}]'},
        {"role": "environment", "name": "plugin", "content": "{}"},
        {"role": "environment", "content": "ok"},
    ]
    assert render("internlm2", messages, add_generation_prompt=False) == (
        "<s><|im_start|>user\nSee the file.<|im_end|>\n"
        '<|im_start|>user name=file\n[{"path": "data.csv"}]<|im_end|>\n'
        "<|im_start|>environment name=<|plugin|>\n{}<|im_end|>\n"
        "<|im_start|>environment\nok<|im_end|>\n"
    )


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        ("Just text.<|im_end|>", "Just text.", []),
        ('<|action_start|><|plugin|>\n{"name": "f", "arguments": {"a": 1}}<|action_end|>', "", [("f", {"a": 1})]),
        ('<|action_start|><|plugin|>\n{"name": "f", "parameters": {"a": [1, 2]}}', "", [("f", {"a": [1, 2]})]),
        ("A<|action_start|><|plugin|>\n{not json}<|action_end|><|im_end|>",
         "A<|action_start|><|plugin|>\n{not json}<|action_end|>", []),
        ('<|action_start|><|plugin|>\n{"parameters": {}}<|action_end|>',
         '<|action_start|><|plugin|>\n{"parameters": {}}<|action_end|>', []),
        ('a<|action_start|><|plugin|>\n{"name": "f", "parameters": {}}<|action_end|>b'
         '<|action_start|><|plugin|>\n{"name": "g", "parameters": {"x": "中"}}<|action_end|><|im_end|>ignored',
         "ab", [("f", {}), ("g", {"x": "中"})]),
    ],
)
def test_internlm2_parse_variants(text, content, calls):
    parsed = parse("internlm2", text)
    assert parsed.content == content
    assert [c["id"] for c in parsed.tool_calls] == [f"call_{i}" for i in range(len(calls))]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed.tool_calls] == calls


def test_chatml_renders_exactly():
    assert render("chatml", SIMPLE) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_llama3_renders_exactly():
    messages = [*SIMPLE[:3], {"role": "user", "content": "  Bye \n"}]
    assert render("llama3", messages) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_chatml_and_llama3_tool_calls_as_json():
    text = render("chatml", CONVERSATION, tools=[WEATHER_TOOL], add_generation_prompt=False)
    assert "<|im_start|>assistant\nLet me check.\n" + CALL_JSON + "<|im_end|>\n" in text
    assert '<|im_start|>tool\n{"temperature": 22}<|im_end|>\n' in text
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.\n\nYou can call the functions below.")
    assert TOOLS_JSON + "<|im_end|>\n<|im_start|>user\n" in text
    text = render("llama3", CONVERSATION, tools=[WEATHER_TOOL], add_generation_prompt=False)
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n{"temperature": 22}<|eot_id|>' in text
    for name, end in (("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>")):
        parsed = parse(name, "Let me check.\n" + CALL_JSON + end)
        assert parsed.content == "Let me check."
        assert parsed.tool_calls == [
            {"id": "call_0", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Shanghai"}'}}
        ]
    assert parse("chatml", 'Use {"braces"} freely {"name": 1}').tool_calls == []


@pytest.fixture
def llama3_tok(tmp_path):
    """A tiny byte-level BPE with the Llama-3 chat tokens."""
    raw = HFRaw(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(["Be brief. Hi there! Hello! Bye. system user assistant"] * 10, trainer)
    raw.save(str(tmp_path / "tokenizer.json"))
    return load_tokenizer(tmp_path)


def test_llama3_render_ids(llama3_tok):
    assert llama3_tok.chat_template == "llama3" and llama3_tok.stop_ids == [1, 4]
    ids, mask = render_ids("llama3", llama3_tok, SIMPLE[:3])
    assert ids == llama3_tok.encode(render("llama3", SIMPLE[:3], add_generation_prompt=False))
    assert ids[0] == llama3_tok.bos_id == 0
    assert _spans(llama3_tok, ids, mask) == ["Hello!<|eot_id|>"]


def test_content_parts_equal_string_content():
    as_string = [{**m, "content": "Hi there"} if i == 1 else m for i, m in enumerate(SIMPLE)]
    assert render("internlm2", SIMPLE) == render("internlm2", as_string)


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ("hello", "messages: expected a list"),
        (["hello"], r"messages\[0\]: expected a dict"),
        ([{"role": "user", "content": "a"}, {"content": "b"}], r"messages\[1\]\.role: None is not one of"),
        ([{"role": "robot", "content": "a"}], r"messages\[0\]\.role: 'robot'"),
        ([{"role": "user", "content": 3}], r"messages\[0\]\.content: expected a string or a list"),
        ([{"role": "user", "content": [{"type": "image", "url": "x"}]}], r"messages\[0\]\.content\[0\]: expected"),
        ([{"role": "user"}], r"messages\[0\]\.content: missing"),
        ([{"role": "user", "content": "a", "tool_calls": [{}]}], r"messages\[0\]\.tool_calls: only assistant"),
        ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}],
         r"messages\[0\]\.tool_calls\[0\]\.function\.arguments: invalid JSON"),
        ([{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}],
         r"messages\[0\]\.tool_calls\[0\]\.function\.name"),
        ([{"role": "assistant", "tool_calls": [{"type": "function"}]}], r"messages\[0\]\.tool_calls\[0\]\.function"),
        ([{"role": "tool", "content": "x", "tool_call_id": 7}], r"messages\[0\]\.tool_call_id: expected a string"),
    ],
)
def test_bad_messages(messages, error):
    with pytest.raises(ValueError, match=error):
        render("internlm2", messages)


def test_role_not_supported_by_template():
    with pytest.raises(ValueError, match=r"messages\[0\]\.role: 'environment' is not one of"):
        render("chatml", [{"role": "environment", "content": "x"}])


def test_bad_tools():
    with pytest.raises(ValueError, match=r"tools\[1\]"):
        render("internlm2", SIMPLE, tools=[WEATHER_TOOL, {"type": "function", "function": {"description": "x"}}])


def test_unknown_template():
    assert list_templates() == ["chatml", "internlm2", "llama3"]
    with pytest.raises(ValueError, match="unknown chat template 'vicuna'; known templates: chatml, internlm2, llama3"):
        get_template("vicuna")


def test_register_template(monkeypatch):
    monkeypatch.setattr(templates_module, "_REGISTRY", dict(templates_module._REGISTRY))

    class Plain(Template):
        name = "plain"

        def segments(self, messages, tools, add_generation_prompt):
            return [Segment(f"{m.role}: {m.content}\n", m.role == "assistant") for m in messages]

    register_template(Plain())
    assert "plain" in list_templates() and isinstance(get_template("plain"), Plain)
    assert render("plain", SIMPLE[1:3]) == "user: Hi there\nassistant: Hello!\n"
