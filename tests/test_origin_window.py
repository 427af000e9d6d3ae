"""The origin window (core/scheduling/origin_window.py) and its asyncio gate."""

from __future__ import annotations

import asyncio

import pytest

from d7y.core.scheduling.origin_window import GAIN, OriginWindow
from d7y.daemons.peer.origin_gate import OriginGate

MIB = 1 << 20


def drive(window: OriginWindow, rtt: float, rate: float, ranges: int = 40) -> list[int]:
    """Ranges in lockstep: each round sends ``limit`` ranges that share ``rate`` and land
    after ``rtt`` + their transfer; returns the limit after each round."""
    limits = []
    for _ in range(ranges):
        k = window.limit
        tokens = [window.started() for _ in range(k)]
        cost = rtt + k * 4 * MIB / rate
        for token in tokens:
            window.done(token, 4 * MIB, cost)
        limits.append(window.limit)
    return limits


def test_a_slow_nearby_origin_keeps_one_range():
    """4 MiB/s, 0.2 ms away: a second range only halves each range's speed."""
    w = OriginWindow(8)
    assert drive(w, 0.0002, 4 * MIB)[-1] == 1 and w.settled


def test_a_fast_distant_origin_opens_the_window():
    """10 Gbit/s, 20 ms away: each range is mostly round trip, so more pay."""
    w = OriginWindow(8)
    limits = drive(w, 0.020, 1.25e9)
    assert limits[-1] >= 4 and w.settled


def test_the_window_stops_at_its_maximum():
    w = OriginWindow(3)
    assert drive(w, 1.0, 1e12)[-1] == 3 and w.settled


def test_a_maximum_of_one_never_probes():
    w = OriginWindow(1)
    assert w.settled and drive(w, 1.0, 1e12) == [1] * 40


def test_only_ranges_sent_under_the_current_limit_count():
    w = OriginWindow(4)
    t1 = w.started()
    assert w.done(t1, MIB, 1.0) == 2  # first sample at 1: kept, try 2
    old = t1  # a range sent under limit 1 that lands late says nothing about 2
    for _ in range(10):
        assert w.done(old, MIB, 100.0) == 2
    a, b = w.started(), w.started()
    w.done(a, MIB, 1.0)
    assert w.done(b, MIB, 1.0) == 3  # two at 1 s each: twice the rate


def test_a_gain_below_the_threshold_steps_back():
    w = OriginWindow(4)
    w.done(w.started(), MIB, 1.0)  # rate 1 MiB/s kept, limit 2
    cost = 2 / (1 + GAIN * 0.9)  # two ranges: a gain just under GAIN
    a, b = w.started(), w.started()
    w.done(a, MIB, cost)
    assert w.done(b, MIB, cost) == 1 and w.settled


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_maximum_is_validated(bad):
    with pytest.raises(ValueError, match="maximum must be an int >= 1"):
        OriginWindow(bad)


def test_the_gate_admits_the_window_limit_at_a_time():
    async def main() -> list[int]:
        gate = OriginGate(OriginWindow(8))  # limit 1 at first
        seen: list[int] = []

        async def worker() -> None:
            token = await gate.enter()
            seen.append(gate.active)
            await asyncio.sleep(0)
            gate.landed(token, MIB, 1.0)
            gate.leave()

        await asyncio.gather(*(worker() for _ in range(4)))
        return seen

    seen = asyncio.run(main())
    # The first range alone; its landing opened the window to 2.
    assert seen[0] == 1 and max(seen) == 2 and len(seen) == 4


def test_without_a_window_the_gate_admits_everyone():
    async def main() -> int:
        gate = OriginGate(None)
        tokens = [await gate.enter() for _ in range(5)]
        assert tokens == [0] * 5
        return gate.active

    assert asyncio.run(main()) == 5
