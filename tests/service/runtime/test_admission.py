"""The burst allowance past a model's in-flight limit: a short burst is taken, a standing
excess drains it and meets the limit, and it refills with time."""

from __future__ import annotations

import time

import pytest

from surety_serving.runtime import admission
from surety_serving.runtime.admission import BurstAllowance

pytestmark = pytest.mark.unit


def test_a_burst_takes_the_allowance_then_meets_the_limit():
    burst = BurstAllowance(8)
    taken = sum(burst.take() for _ in range(20))
    assert taken == 8  # a standing excess gets the bucket once, then nothing


def test_the_allowance_refills_at_its_size_per_refill_period():
    burst = BurstAllowance(8)
    while burst.take():
        pass
    time.sleep(admission.BURST_REFILL_S / 4)
    refilled = sum(burst.take() for _ in range(8))
    assert 1 <= refilled <= 3  # a quarter of the period: about 2 of 8 tokens
    time.sleep(admission.BURST_REFILL_S * 2)
    assert sum(burst.take() for _ in range(20)) == 8  # never more than its size
