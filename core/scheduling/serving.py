"""Which peers of a task may be offered as parents: the task's ``servable`` set.

The set is kept up to date as peers change (state, first piece, first parent), so a
scheduling round samples and filters against it without re-deriving it peer by peer.
"""

from __future__ import annotations

from d7y.core.scheduling.resource import Peer
from d7y.core.states import PeerState

_RUNNING = PeerState.RUNNING
_BTS = PeerState.BACK_TO_SOURCE
_SUCCEEDED = PeerState.SUCCEEDED
_RECEIVED_NORMAL = PeerState.RECEIVED_NORMAL


def has_parents(peer: Peer) -> bool:
    """The peer has at least one parent in its task's DAG."""
    return bool(peer.task.dag._parents[peer.id])


def can_serve(peer: Peer) -> bool:
    """Whether a peer may be offered as a parent at all (before the bad-parent test).

    Dragonfly's filter: succeeded and back-to-source peers; a running peer that has
    parents in the DAG (it will have pieces soon, even with none yet) or already
    holds pieces; a running seed peer (seed hosts skip the in-degree check).
    Pending or registered-only peers, failed and left peers do not serve.
    """
    state = peer.fsm.state
    if state is _SUCCEEDED or state is _BTS:
        return True
    if state is _RUNNING:
        return peer.finished_count > 0 or peer.host.is_seed or bool(peer.task.dag._parents[peer.id])
    return False


def has_available_peer(peer: Peer) -> bool:
    """Some peer of the task can serve, on another host and not blocklisted."""
    host = peer.host
    blocklist = peer.blocklist
    for other in peer.task.servable.items:
        if other.host is not host and other.id not in blocklist:
            return True
    return False


def is_starting(peer: Peer) -> bool:
    """A normal peer just given parents whose download has not started yet (it will
    relay as soon as its first piece lands)."""
    return peer.fsm.state is _RECEIVED_NORMAL and bool(peer.task.dag._parents[peer.id])


class Servability:
    """The servable-set rules of one scheduler (``early_parents`` is its config's)."""

    __slots__ = ("early_parents",)

    def __init__(self, early_parents: bool) -> None:
        self.early_parents = early_parents

    def about_to_serve(self, peer: Peer) -> bool:
        """``early_parents``: a starting peer (see :func:`is_starting`) is already a
        candidate. In a registration burst the next peer's round often comes before the
        first one's DownloadStarted; without this it finds no parent with room."""
        return self.early_parents and is_starting(peer)

    def refresh(self, peer: Peer) -> None:
        """Put the peer in its task's servable and starting sets or take it out, as it
        is now."""
        task = peer.task
        starting = is_starting(peer)
        if can_serve(peer) or (starting and self.early_parents):
            task.servable.add(peer)
        else:
            task.servable.discard(peer)
        if starting:
            task.starting.add(peer)
        else:
            task.starting.discard(peer)


__all__ = ["Servability", "can_serve", "has_available_peer", "has_parents", "is_starting"]
