"""Peer and task life cycles as explicit transition tables (after Dragonfly's FSMs).

A transition that is not in the table raises :class:`IllegalTransition` naming the
current state and the event: a scheduler that, say, marks a failed peer as running has a
bug we want to see, not a silent no-op.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)


class IllegalTransition(RuntimeError):
    """An event arrived in a state that does not accept it."""

    def __init__(self, machine: str, state: enum.Enum, event: enum.Enum) -> None:
        super().__init__(f"{machine}: event {event.name} is not allowed in state {state.name}")
        self.state = state
        self.event = event


class PeerState(enum.Enum):
    PENDING = "Pending"
    RECEIVED_EMPTY = "ReceivedEmpty"
    RECEIVED_TINY = "ReceivedTiny"
    RECEIVED_SMALL = "ReceivedSmall"
    RECEIVED_NORMAL = "ReceivedNormal"
    RUNNING = "Running"
    BACK_TO_SOURCE = "BackToSource"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    LEAVE = "Leave"


class PeerEvent(enum.Enum):
    REGISTER_EMPTY = "RegisterEmpty"
    REGISTER_TINY = "RegisterTiny"
    REGISTER_SMALL = "RegisterSmall"
    REGISTER_NORMAL = "RegisterNormal"
    DOWNLOAD = "Download"
    DOWNLOAD_BACK_TO_SOURCE = "DownloadBackToSource"
    DOWNLOAD_SUCCEEDED = "DownloadSucceeded"
    DOWNLOAD_FAILED = "DownloadFailed"
    LEAVE = "Leave"


class TaskState(enum.Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    LEAVE = "Leave"


class TaskEvent(enum.Enum):
    DOWNLOAD = "Download"
    DOWNLOAD_SUCCEEDED = "DownloadSucceeded"
    DOWNLOAD_FAILED = "DownloadFailed"
    LEAVE = "Leave"


def _table(rules: Iterable[tuple[E, Iterable[S], S]]) -> dict[tuple[S, E], S]:
    table: dict = {}
    for event, sources, target in rules:
        for source in sources:
            table[(source, event)] = target
    return table


_P = PeerState
_RECEIVED = (_P.RECEIVED_EMPTY, _P.RECEIVED_TINY, _P.RECEIVED_SMALL, _P.RECEIVED_NORMAL)

PEER_TRANSITIONS: Mapping[tuple[PeerState, PeerEvent], PeerState] = _table(
    [
        (PeerEvent.REGISTER_EMPTY, [_P.PENDING], _P.RECEIVED_EMPTY),
        (PeerEvent.REGISTER_TINY, [_P.PENDING], _P.RECEIVED_TINY),
        (PeerEvent.REGISTER_SMALL, [_P.PENDING], _P.RECEIVED_SMALL),
        (PeerEvent.REGISTER_NORMAL, [_P.PENDING], _P.RECEIVED_NORMAL),
        (PeerEvent.DOWNLOAD, _RECEIVED, _P.RUNNING),
        (PeerEvent.DOWNLOAD_BACK_TO_SOURCE, (*_RECEIVED, _P.RUNNING), _P.BACK_TO_SOURCE),
        (
            PeerEvent.DOWNLOAD_SUCCEEDED,
            (*_RECEIVED, _P.RUNNING, _P.BACK_TO_SOURCE),
            _P.SUCCEEDED,
        ),
        (
            PeerEvent.DOWNLOAD_FAILED,
            (_P.PENDING, *_RECEIVED, _P.RUNNING, _P.BACK_TO_SOURCE, _P.SUCCEEDED),
            _P.FAILED,
        ),
        (PeerEvent.LEAVE, [s for s in PeerState if s is not _P.LEAVE], _P.LEAVE),
    ]
)

_T = TaskState
TASK_TRANSITIONS: Mapping[tuple[TaskState, TaskEvent], TaskState] = _table(
    [
        # A finished or failed task runs again when a new peer downloads it.
        (TaskEvent.DOWNLOAD, (_T.PENDING, _T.SUCCEEDED, _T.FAILED, _T.LEAVE), _T.RUNNING),
        (TaskEvent.DOWNLOAD_SUCCEEDED, (_T.RUNNING, _T.FAILED, _T.LEAVE), _T.SUCCEEDED),
        (TaskEvent.DOWNLOAD_FAILED, (_T.RUNNING,), _T.FAILED),
        (TaskEvent.LEAVE, (_T.PENDING, _T.RUNNING, _T.SUCCEEDED, _T.FAILED), _T.LEAVE),
    ]
)


class StateMachine(Generic[S, E]):
    """A current state plus a transition table; :meth:`fire` moves or raises."""

    __slots__ = ("_name", "_table", "state")

    def __init__(self, name: str, table: Mapping[tuple[S, E], S], initial: S) -> None:
        self._name = name
        self._table = table
        self.state = initial

    def can(self, event: E) -> bool:
        """Whether ``event`` is allowed in the current state."""
        return (self.state, event) in self._table

    def fire(self, event: E) -> S:
        """Apply ``event``; return the new state or raise :class:`IllegalTransition`."""
        try:
            self.state = self._table[(self.state, event)]
        except KeyError:
            raise IllegalTransition(self._name, self.state, event) from None
        return self.state

    def is_(self, *states: S) -> bool:
        return self.state in states

    def __repr__(self) -> str:
        return f"<StateMachine {self._name} state={self.state.name}>"


def peer_fsm(name: str = "peer") -> StateMachine[PeerState, PeerEvent]:
    """A peer's life cycle, starting in PENDING."""
    return StateMachine(name, PEER_TRANSITIONS, PeerState.PENDING)


def task_fsm(name: str = "task") -> StateMachine[TaskState, TaskEvent]:
    """A task's life cycle, starting in PENDING."""
    return StateMachine(name, TASK_TRANSITIONS, TaskState.PENDING)
