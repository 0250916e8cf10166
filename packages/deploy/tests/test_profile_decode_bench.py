"""benchmarks/profile_decode.py's kernel timeline (the summary of a --trace run) on synthetic trace events."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from profile_decode import kernel_timeline  # noqa: E402


def k(name, ts, dur):
    return {"cat": "kernel", "name": name, "ts": ts, "dur": dur}


def test_overlapping_kernels_are_charged_what_they_add_to_the_span():
    # two steps: a GEMM, then a norm launched early (PDL) that waits inside it and ends 2 us after it, a gap of
    # 3 us, then an attention kernel; a CPU event in between is ignored
    events = []
    for base in (0.0, 100.0):
        events += [k("gemm", base, 10.0), k("norm", base + 4.0, 8.0), {"cat": "cpu_op", "name": "x", "ts": base,
                                                                         "dur": 50.0},
                   k("attn", base + 15.0, 5.0)]
    rows = {name: (calls, inc, dur) for name, calls, inc, dur in kernel_timeline(events, steps=2)}
    assert rows["norm"] == (1.0, 2.0, 8.0)  # its duration counts its wait; its increment does not
    assert rows["attn"] == (1.0, 8.0, 5.0)  # the 3 us gap before it is charged to it
    # the first kernel of the first step starts the span; the second step's gemm is charged from attn's end
    assert rows["gemm"] == (1.0, pytest.approx((100.0 + 10.0 - 20.0) / 2), 10.0)
    total = sum(r[1] for r in rows.values()) * 2
    assert total == pytest.approx(120.0 - 10.0)  # the span from the first kernel's end to the last one's
    assert [name for name, *_ in kernel_timeline(events, 2)] == ["gemm", "attn", "norm"]
