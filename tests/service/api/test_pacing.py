"""RetryPacer: a connection that comes back before its Retry-After has its refusal held."""

from __future__ import annotations

import time

import pytest

from surety_serving.api import pacing
from surety_serving.api.pacing import RetryPacer

pytestmark = pytest.mark.unit

CLIENT = ("127.0.0.1", 40000)


def test_a_client_that_waits_is_never_held():
    pacer = RetryPacer(0.2)
    assert pacer.hold(CLIENT) == 0.0
    time.sleep(0.2)
    assert pacer.hold(CLIENT) == 0.0


def test_an_early_return_is_held_until_retry_after_and_paced_from_there():
    pacer = RetryPacer(0.2)
    assert pacer.hold(CLIENT) == 0.0
    first = pacer.hold(CLIENT)  # at once: held for about the tolerated Retry-After
    assert 0.15 < first <= pacing.TOLERANCE * 0.2
    second = pacer.hold(CLIENT)  # again at once: after the held one, one more Retry-After
    assert second > first + 0.15


def test_connections_are_paced_apart_and_without_an_address_never():
    pacer = RetryPacer(1.0)
    assert pacer.hold(CLIENT) == 0.0
    assert pacer.hold(("127.0.0.1", 40001)) == 0.0
    assert pacer.hold(None) == 0.0
    assert pacer.hold(None) == 0.0


def test_the_table_sheds_expired_connections():
    pacer = RetryPacer(0.01)
    for port in range(pacing.SWEEP_GROWTH - 1):
        pacer.hold(("127.0.0.1", port))
    time.sleep(0.02)
    pacer.hold(CLIENT)  # reaches the sweep: every earlier entry has expired
    assert len(pacer._not_before) == 1
