"""core/scheduling/upload_slots.py: a host's upload slots, handed out fairly."""

from __future__ import annotations

import pytest

from d7y.core.scheduling.upload_slots import FAIR_SLOT_WINDOW, UploadSlots


def test_no_limit_never_refuses():
    slots = UploadSlots(0, FAIR_SLOT_WINDOW)
    assert all(slots.acquire(f"c{i}", 0.0) for i in range(1000))
    assert slots.active == 1000 and not slots.full


def test_a_full_host_refuses_until_a_slot_is_released():
    slots = UploadSlots(2, 0.0)
    assert slots.acquire("a", 0.0) and slots.acquire("b", 0.0)
    assert slots.full and not slots.acquire("c", 0.0)
    slots.release("a", 1.0)
    assert slots.acquire("c", 1.0)


def test_a_child_just_served_yields_the_slot_to_one_refused():
    slots = UploadSlots(1, 0.1)
    assert slots.acquire("a", 0.0)
    assert not slots.acquire("b", 0.01)  # full: b backs off
    slots.release("a", 0.05)
    # a asks again at once: b was refused 0.04 s ago, so a yields
    assert not slots.acquire("a", 0.0502)
    # b's retry after its back-off finds the slot
    assert slots.acquire("b", 0.11)
    slots.release("b", 0.2)
    # nobody was refused within the window: b may go on back to back
    assert slots.acquire("b", 0.2002)


def test_without_a_window_the_fastest_asker_keeps_the_slot():
    slots = UploadSlots(1, 0.0)
    assert slots.acquire("a", 0.0)
    assert not slots.acquire("b", 0.01)
    slots.release("a", 0.05)
    assert slots.acquire("a", 0.0502)  # first come, first served: b starves


def test_a_yield_does_not_extend_the_window():
    slots = UploadSlots(1, 0.1)
    slots.acquire("a", 0.0)
    assert not slots.acquire("b", 0.0)
    slots.release("a", 0.05)
    assert not slots.acquire("a", 0.06)  # yields; not a refusal of a full host
    # 0.1 s after the only real refusal, a may take the slot again
    assert slots.acquire("a", 0.11)


def test_the_served_record_is_pruned():
    slots = UploadSlots(4, 0.1)
    for i in range(5000):
        assert slots.acquire(i, i * 1.0)
        slots.release(i, i * 1.0)
    assert len(slots._served_at) <= 512


@pytest.mark.parametrize(
    "limit, window, message",
    [(-1, 0.1, "slot limit -1 is negative"), (4, -0.1, "window -0.1"), (4, float("nan"), "nan")],
)
def test_bad_settings_name_the_value(limit, window, message):
    with pytest.raises(ValueError, match=message):
        UploadSlots(limit, window)


def test_release_without_acquire_is_an_error():
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        UploadSlots(1, 0.1).release("a", 0.0)
