"""The scheduler's errors, and the checks that raise them on a caller's arguments.

Every error a caller can cause is a :class:`SchedulerError` (the daemon answers it as a
protocol error and keeps serving), or a TypeError / ValueError naming the bad value.
"""

from __future__ import annotations

import math

from d7y.core.scheduling.resource import Peer
from d7y.core.states import IllegalTransition, PeerEvent


class SchedulerError(Exception):
    """Base of the scheduler's errors (the daemon maps them to protocol errors)."""


class UnknownHost(SchedulerError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownPeer(SchedulerError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class UnknownTask(SchedulerError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class DuplicatePeer(SchedulerError, ValueError):
    """A peer ID registered twice."""


class PeerStateError(SchedulerError, ValueError):
    """A call that makes no sense in the peer's current state."""


class PieceNumberError(SchedulerError, IndexError):
    """A piece number outside the task."""


def fire_reported(peer: Peer, event: PeerEvent) -> None:
    """``peer.fsm.fire(event)`` for an event a caller reported: an illegal transition is
    the caller's error (a PeerStateError the daemon answers), not the scheduler's."""
    try:
        peer.fsm.fire(event)
    except IllegalTransition:
        raise PeerStateError(
            f"peer {peer.id!r} is {peer.fsm.state.name}: {event.name} is not allowed there"
        ) from None


def check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str, got {value!r}")
    return value


def check_count(name: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_time(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"now must be a number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"now must be a finite number of seconds, got {value!r}")
    return value


__all__ = [
    "DuplicatePeer",
    "PeerStateError",
    "PieceNumberError",
    "SchedulerError",
    "UnknownHost",
    "UnknownPeer",
    "UnknownTask",
    "check_count",
    "check_id",
    "check_time",
    "fire_reported",
]
