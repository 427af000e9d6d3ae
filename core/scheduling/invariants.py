"""The scheduler's invariants, checked on demand (tests, the simulator)."""

from __future__ import annotations

from collections.abc import Mapping

from d7y.core.scheduling.resource import Host, Task


def verify_invariants(hosts: Mapping[str, Host], tasks: Mapping[str, Task], limit: int) -> None:
    """Raise AssertionError naming the first broken invariant: every DAG acyclic; no self
    or same-host edge; no edge from a blocklisted parent; in-degree <= ``limit``; every
    host's load counters equal the sum of the reservations on its edges and are never
    negative."""
    expected: dict[str, list[int]] = {h: [0, 0, 0, 0] for h in hosts}
    for task in tasks.values():
        dag = task.dag
        if not dag.is_acyclic():
            raise AssertionError(f"task {task.id}: the DAG has a cycle")
        if not dag.is_consistent():
            raise AssertionError(f"task {task.id}: the DAG's edge indexes disagree")
        for parent_id, child_id, res in dag.edges():
            parent = task.peers[parent_id]
            child = task.peers[child_id]
            if parent is child or parent.host is child.host:
                raise AssertionError(f"edge {parent_id} -> {child_id} within one host")
            if parent_id in child.blocklist:
                raise AssertionError(f"edge {parent_id} -> {child_id} from a blocklisted parent")
            acc = expected[parent.host.id]
            acc[0] += res.tx_bandwidth
            acc[1] += res.pieces
            acc[2] += res.content_length
            acc[3] += 1
        for peer_id in task.peers:
            if dag.in_degree(peer_id) > limit:
                raise AssertionError(f"peer {peer_id} has {dag.in_degree(peer_id)} parents")
    for host_id, (tx, pieces, length, edges) in expected.items():
        host = hosts[host_id]
        got = (
            host.tx_bandwidth,
            host.concurrent_upload_piece_count,
            host.upload_content_length,
            host.concurrent_upload_count,
        )
        want = (tx, pieces, length, edges)
        if got != want or min(got) < 0:
            raise AssertionError(f"host {host_id}: load counters {got} != reservations {want}")


__all__ = ["verify_invariants"]
