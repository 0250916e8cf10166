"""SSE chunks made without json.dumps equal json.dumps' own, byte for byte; the per-chunk benchmark runs."""

import random
import subprocess
import sys
from pathlib import Path

import pytest

from shusheng.deploy.server.sse import Chunks, sse

TEXTS = ["", "hi", ' a"b\\c', "line\nbreak\ttab\r", "\x00\x01\x1f\x7f", "你好", "😀 emoji", "\u2028\u2029", "é"]


def _random_text(rng: random.Random) -> str:
    return "".join(chr(rng.choice([rng.randrange(0, 128), rng.randrange(128, 0x2FFF), 0x1F600])) for _ in range(8))


@pytest.mark.parametrize("obj", ["text_completion", "chat.completion.chunk"])
def test_chunks_equal_json_dumps(obj):
    rng = random.Random(0)
    rid, model = 'cmpl-1"x\\', "modèle/7b"
    chunks = Chunks(rid, obj, 1_700_000_000, model)
    for text in TEXTS + [_random_text(rng) for _ in range(200)]:
        for finish in (None, "stop", "length", "tool_calls"):
            index = rng.randrange(0, 5)
            base = {"id": rid, "object": obj, "created": 1_700_000_000, "model": model}
            want = sse({**base, "choices": [{"index": index, "text": text, "logprobs": None,
                                             "finish_reason": finish}]})
            assert chunks.text(index, text, finish) == want
            want = sse({**base, "choices": [{"index": index, "delta": {"content": text} if text else {},
                                             "logprobs": None, "finish_reason": finish}]})
            assert chunks.content(index, text, finish) == want


def test_sse_chunks_benchmark_runs():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "sse_chunks.py"
    proc = subprocess.run([sys.executable, str(script), "--streams", "3", "--steps", "4", "--repeats", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "3 streams x 4 steps: us per chunk" in proc.stdout
    bad = subprocess.run([sys.executable, str(script), "--streams", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "at least 1" in bad.stderr
