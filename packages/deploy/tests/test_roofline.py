"""The roofline of `shusheng-deploy bench` / throughput.py: its floors follow from the ceilings as they should."""

import pytest

from shusheng.deploy.bench import roofline
from shusheng.model import ModelConfig

CFG = ModelConfig.from_name("tiny")
CEILINGS = {"bandwidth": 2.0e12, "gemm_flops": 5.0e14}
REQUESTS = [([1] * 40, 6), ([2] * 7, 3), ([3] * 100, 12)]


def test_batch1_floor_is_the_weights_over_bandwidth():
    roof = roofline(CFG, REQUESTS, CEILINGS, max_num_seqs=2)
    assert roof["batch1_decode_floor_ms"] == pytest.approx(roof["weight_bytes"] / 2.0e12 * 1e3)
    assert roof["floor_s"] == pytest.approx(roof["prefill_floor_s"] + roof["decode_floor_s"])
    assert roof["output_tokens_per_s_roofline"] == pytest.approx(21 / roof["floor_s"])


def test_one_sequence_at_a_time_takes_a_step_per_token_after_the_first():
    assert roofline(CFG, REQUESTS, CEILINGS, max_num_seqs=1)["decode_steps"] == 5 + 2 + 11
    # all at once: as many steps as the longest request needs
    assert roofline(CFG, REQUESTS, CEILINGS, max_num_seqs=8)["decode_steps"] == 11


def test_tensor_parallel_cards_add_their_ceilings():
    one = roofline(CFG, REQUESTS, CEILINGS, max_num_seqs=4)
    two = roofline(CFG, REQUESTS, CEILINGS, max_num_seqs=4, num_devices=2)
    for key in ("prefill_floor_s", "decode_floor_s", "batch1_decode_floor_ms"):
        assert two[key] == pytest.approx(one[key] / 2), key
    assert two["output_tokens_per_s_roofline"] == pytest.approx(2 * one["output_tokens_per_s_roofline"])
