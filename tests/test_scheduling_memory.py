"""Memory the scheduler keeps per registered peer (issue 13: <= 16 KB per peer for the
whole daemon), counted with tracemalloc in-process, so the figure is deterministic for
one Python build: no RSS, no clock.

1,000 peers, each on its own host (so a host is counted with its peer), 100 peers a task,
each reporting DownloadStarted and 64 pieces from the origin (its bitmap, cost window
and the task's digests are in use). Every test runs against both bitmap backends."""

from __future__ import annotations

import gc
import random
import tracemalloc

from d7y.core.scheduling import Scheduler, SchedulerConfig
from d7y.core.scheduling.resource import NO_PEERS

MiB = 1024 * 1024
PEERS = 1000
PIECES = 64
#: Bytes one host + one peer may hold in the core scheduler, both backends (2.6 KB with
#: CPython 3.11: the cost window's 64 doubles, bitmap, Peer and Host objects, ID strings,
#: index entries). The piece-cost deque this project had (~600 bytes empty, 32 a sample)
#: would cross it, as would a window that preallocates or a few dicts of defaults.
CORE_BYTES_PER_PEER = 3072


def host_id(i: int) -> str:
    return f"10.0.{i // 250}.{i % 250}-host{i}"


def add_peers(s: Scheduler, first: int, count: int) -> None:
    for i in range(first, first + count):
        s.announce_host(host_id(i), 0.0, ip="127.0.0.1", hostname=f"host{i}", port=4000)
    for i in range(first, first + count):
        # Dragonfly-shaped IDs: the host's, then a UUID.
        peer_id = f"{host_id(i)}-{i:08x}-0000-4000-8000-000000000000"
        task = f"{i // 100:064x}"
        s.register_peer(
            peer_id, task, host_id(i), "http://origin/f.bin", 1.0, need_back_to_source=True
        )
        s.download_started(peer_id, 1.0, back_to_source=True, content_length=1024 * MiB)
        for number in range(PIECES):
            s.piece_finished(peer_id, number, None, 0.01, f"crc32:{number}", 2.0)


def traced_bytes_per_peer(bitmap_impl) -> float:
    s = Scheduler(SchedulerConfig(), rng=random.Random(1), bitmaps=bitmap_impl)
    add_peers(s, 0, 100)  # first-use caches (interned names, type caches) outside the count
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        add_peers(s, 100, PEERS)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(s.peers) == 100 + PEERS
    s.verify_invariants()
    return (after - before) / PEERS


def test_core_memory_per_registered_peer_is_bounded(bitmap_impl):
    per_peer = traced_bytes_per_peer(bitmap_impl)
    assert per_peer <= CORE_BYTES_PER_PEER, f"{per_peer:.0f} bytes per host + peer"


def test_a_peer_without_blocks_or_failures_holds_no_containers_for_them(bitmap_impl):
    s = Scheduler(SchedulerConfig(), rng=random.Random(1), bitmaps=bitmap_impl)
    add_peers(s, 0, 2)
    peer = s.peer(next(iter(s.peers)))
    assert peer.blocklist is NO_PEERS and peer.piece_failures is None
    other = next(p for p in s.peers if p != peer.id)
    result = s.piece_failed(peer.id, 0, other, 3.0)
    # The first failure from a parent blocklists it: only now does the peer own a set.
    assert result.blocklisted and peer.blocklist == {other} and peer.blocklist is not NO_PEERS
    assert peer.piece_failures == {other: 1}
