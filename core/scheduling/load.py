"""DAG edges and the upload load they reserve on the parent's host (DESIGN section 4).

Adding an edge reserves bandwidth, upload slots and content length on the parent's
host; the reservation is stored on the edge, so removing the edge releases exactly what
was reserved, even if the task's geometry was learnt in between.
"""

from __future__ import annotations

from d7y.core.scheduling.resource import Peer, Reservation, Task
from d7y.core.scheduling.serving import Servability


class LoadLedger:
    """Adds and removes edges, keeping every host's load counters equal to the sum of
    the reservations on its out-edges (``Scheduler.verify_invariants`` checks it)."""

    __slots__ = ("default_piece_length", "serving")

    def __init__(self, default_piece_length: int, serving: Servability) -> None:
        self.default_piece_length = default_piece_length
        self.serving = serving

    def add_edge(self, parent: Peer, child: Peer) -> None:
        """parent -> child, reserving load on the parent's host. The caller has
        filtered out cycles."""
        task = child.task
        pieces = child.concurrent_piece_count
        piece_length = task.piece_length or self.default_piece_length
        reservation = Reservation(piece_length * pieces * 8, pieces, task.content_length or 0)
        task.dag._add_edge_unchecked(parent.id, child.id, reservation)
        host = parent.host
        host.tx_bandwidth += reservation.tx_bandwidth
        host.concurrent_upload_piece_count += pieces
        host.upload_content_length += reservation.content_length
        host.concurrent_upload_count += 1
        host.upload_count += 1
        if child.finished_count == 0:
            self.serving.refresh(child)  # a running peer with a parent may serve

    @staticmethod
    def release(task: Task, parent_id: str, reservation: Reservation) -> None:
        """Give the parent's host back what one (already removed) edge reserved."""
        host = task.peers[parent_id].host
        host.tx_bandwidth -= reservation.tx_bandwidth
        host.concurrent_upload_piece_count -= reservation.pieces
        host.upload_content_length -= reservation.content_length
        host.concurrent_upload_count -= 1

    def delete_edge(self, task: Task, parent_id: str, child: Peer) -> None:
        """Remove parent -> child (which must exist) and release its load."""
        self.release(task, parent_id, task.dag.delete_edge(parent_id, child.id))
        self.serving.refresh(child)

    def delete_in_edges(self, peer: Peer) -> None:
        task = peer.task
        if task.dag.in_degree(peer.id):
            for parent_id, _, reservation in task.dag.delete_in_edges(peer.id):
                self.release(task, parent_id, reservation)
            if peer.finished_count == 0:
                self.serving.refresh(peer)

    def delete_out_edges(self, peer: Peer) -> list[str]:
        """Remove the peer's out-edges; returns the children that lost it."""
        task = peer.task
        if not task.dag.out_degree(peer.id):
            return []
        orphans = []
        for _, child_id, reservation in task.dag.delete_out_edges(peer.id):
            self.release(task, peer.id, reservation)
            orphans.append(child_id)
        return orphans


__all__ = ["LoadLedger"]
