import pytest

from d7y.core.states import (
    PEER_TRANSITIONS,
    IllegalTransition,
    PeerEvent,
    PeerState,
    TaskEvent,
    TaskState,
    peer_fsm,
    task_fsm,
)


def test_peer_normal_life_cycle():
    fsm = peer_fsm("peer p1")
    assert fsm.state is PeerState.PENDING
    fsm.fire(PeerEvent.REGISTER_NORMAL)
    fsm.fire(PeerEvent.DOWNLOAD)
    fsm.fire(PeerEvent.DOWNLOAD_BACK_TO_SOURCE)
    assert fsm.fire(PeerEvent.DOWNLOAD_SUCCEEDED) is PeerState.SUCCEEDED
    assert fsm.fire(PeerEvent.LEAVE) is PeerState.LEAVE


def test_illegal_transition_names_state_and_event():
    fsm = peer_fsm("peer p1")
    fsm.fire(PeerEvent.REGISTER_TINY)
    fsm.fire(PeerEvent.DOWNLOAD_FAILED)
    with pytest.raises(
        IllegalTransition, match="peer p1: event DOWNLOAD is not allowed in state FAILED"
    ):
        fsm.fire(PeerEvent.DOWNLOAD)
    assert fsm.state is PeerState.FAILED  # a refused event changes nothing


def test_every_peer_state_can_leave_but_leave_is_final():
    for state in PeerState:
        if state is PeerState.LEAVE:
            assert not any(s is PeerState.LEAVE for s, _ in PEER_TRANSITIONS)
        else:
            assert PEER_TRANSITIONS[(state, PeerEvent.LEAVE)] is PeerState.LEAVE


def test_register_only_from_pending():
    fsm = peer_fsm()
    fsm.fire(PeerEvent.REGISTER_SMALL)
    assert not fsm.can(PeerEvent.REGISTER_NORMAL)
    with pytest.raises(IllegalTransition):
        fsm.fire(PeerEvent.REGISTER_NORMAL)


def test_task_life_cycle():
    fsm = task_fsm("task t")
    fsm.fire(TaskEvent.DOWNLOAD)
    fsm.fire(TaskEvent.DOWNLOAD_FAILED)
    fsm.fire(TaskEvent.DOWNLOAD)  # a failed task runs again for a new peer
    assert fsm.fire(TaskEvent.DOWNLOAD_SUCCEEDED) is TaskState.SUCCEEDED
    with pytest.raises(
        IllegalTransition, match="DOWNLOAD_FAILED is not allowed in state SUCCEEDED"
    ):
        fsm.fire(TaskEvent.DOWNLOAD_FAILED)
