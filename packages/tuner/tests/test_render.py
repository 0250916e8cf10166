"""Rendering and loss masks: the trained tokens are exactly the assistant's, on the real InternLM2 tokenizer."""

import torch

from shusheng.model.chat import render
from shusheng.model.loss import IGNORE_INDEX
from shusheng.tuner.data import Conversation, Preference, Text, collate, encode, encode_pair

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
CALL = [{"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "上海"}'}}]
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What's the weather in Shanghai?"},
    {"role": "assistant", "content": "Let me check.", "tool_calls": CALL},
    {"role": "tool", "tool_call_id": "call_0", "content": '{"temperature": 22}'},
    {"role": "assistant", "content": "It is 22 °C in Shanghai."},
    {"role": "user", "content": "\nAnd tomorrow?"},
    {"role": "assistant", "content": "\nI can only see today's weather."},
]
# the assistant turns' text as the InternLM2 template writes it (content, tool call, end of turn)
ASSISTANT_BODIES = [
    'Let me check.<|action_start|><|plugin|>\n{"name": "get_weather", "parameters": {"city": "上海"}}'
    "<|action_end|><|im_end|>",
    "It is 22 °C in Shanghai.<|im_end|>",
    "\nI can only see today's weather.<|im_end|>",
]


def expected_trained(tok, text: str) -> tuple[list[int], list[list[int]]]:
    """Independently of render_ids: the full ids, and for each assistant body the tokens that carry its characters
    (token i spans text[off[i]:off[i + 1]], with off[i] = len(decode(ids[:i])))."""
    full = tok.encode(text)
    off = [len(tok.decode(full[:i])) for i in range(len(full) + 1)]
    assert off[-1] == len(text)
    spans, pos = [], 0
    for body in ASSISTANT_BODIES:
        start = text.index(body, pos)
        pos = start + len(body)
        spans.append([full[i] for i in range(len(full)) if off[i + 1] > start and off[i] < pos])
        # A body that starts with "\n" right after the header's "\n" shares a "\n\n" token with the header: the
        # token carries body text, so it is trained (render_ids gives a merged token the later segment's flag).
        assert tok.decode(spans[-1]) in (body, "\n" + body)
    return full, spans


def test_trained_tokens_are_exactly_the_assistant_parts(internlm2_tok):
    tok = internlm2_tok
    text = render("internlm2", MESSAGES, tools=TOOLS, add_generation_prompt=False)
    full, spans = expected_trained(tok, text)
    assert tok.decode(spans[2]) == "\n" + ASSISTANT_BODIES[2]  # the merged-boundary case is exercised
    sample = encode(Conversation(MESSAGES, TOOLS), tok, "internlm2")
    assert sample.ids == full
    trained = [t for t, m in zip(sample.ids, sample.trained, strict=True) if m]
    assert trained == [t for span in spans for t in span]
    assert sample.num_trained == sum(map(len, spans))
    # the labels of a packed batch (next-token targets) hold the same ids, in order, and nothing else
    batch = collate([(sample,)])
    labels = batch.labels[0]
    assert labels[labels != IGNORE_INDEX].tolist() == trained
    assert labels[:-1][labels[:-1] != IGNORE_INDEX].tolist() == batch.input_ids[0, 1:][labels[:-1] != IGNORE_INDEX
                                                                                         ].tolist()
    assert labels[-1] == IGNORE_INDEX  # the last token predicts nothing
    # the tool result, the tool declaration, the system and user turns are never trained
    im_end = tok.token_to_id("<|im_end|>")
    assert sum(1 for t, m in zip(sample.ids, sample.trained, strict=True) if t == im_end and m) == 3
    assert sum(1 for t in sample.ids if t == im_end) == 8


def test_train_on_all_and_raw_text(internlm2_tok):
    tok = internlm2_tok
    sample = encode(Conversation(MESSAGES, TOOLS), tok, "internlm2", train_on="all")
    assert all(sample.trained) and sample.num_trained == len(sample) - 1
    text = encode(Text("Shusheng 书生 tunes models."), tok, "internlm2")
    assert text.ids == [tok.bos_id, *tok.encode("Shusheng 书生 tunes models."), tok.eos_id]
    labels = collate([(text,)]).labels[0]
    assert labels.tolist() == text.ids[1:] + [IGNORE_INDEX]


def test_default_system_prompt_only_when_missing(internlm2_tok):
    tok = internlm2_tok
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    got = encode(Conversation(plain), tok, "internlm2", system="Be kind.")
    assert tok.decode(got.ids).startswith("<s><|im_start|>system\nBe kind.<|im_end|>")
    kept = encode(Conversation(MESSAGES[:2] + [MESSAGES[4]]), tok, "internlm2", system="Be kind.")
    assert "Be kind." not in tok.decode(kept.ids)


def test_pair_trains_only_the_final_reply(internlm2_tok):
    tok = internlm2_tok
    prompt = MESSAGES[:5] + [{"role": "user", "content": "And tomorrow?"}]
    pair = Preference(prompt, [{"role": "assistant", "content": "Sunny."}],
                      [{"role": "assistant", "content": "No idea."}], tools=TOOLS)
    chosen, rejected = encode_pair(pair, tok, "internlm2", system="Judge helpfulness.")
    for doc, reply in ((chosen, "Sunny.<|im_end|>"), (rejected, "No idea.<|im_end|>")):
        trained = [t for t, m in zip(doc.ids, doc.trained, strict=True) if m]
        assert tok.decode(trained) == reply  # earlier assistant turns of the prompt are not scored
        assert tok.decode(doc.ids).startswith("<s><|im_start|>system\nJudge helpfulness.<|im_end|>")
    batch = collate([(chosen, rejected)])
    assert batch.lengths == [len(chosen), len(rejected)]
    # a reward model reads each reply's score at its end-of-turn token
    assert batch.input_ids[0, batch.last].tolist() == [tok.token_to_id("<|im_end|>")] * 2
    assert torch.equal(batch.doc_index()[batch.last], torch.tensor([0, 1]))
