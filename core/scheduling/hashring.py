"""A consistent-hash ring: which seed peer fetches a task from the origin.

Every scheduler instance maps a task ID to the same seed host, so a task is fetched from
the origin by one seed peer however many schedulers see it. Each node owns ``vnodes``
points on a 64-bit ring (BLAKE2b of ``"<node>#<i>"``); a key belongs to the first point at
or after its own hash, wrapping around. Adding or removing one of N nodes moves only the
keys of that node's arcs, about 1/N of them, and every other key keeps its node.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Iterator


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Nodes (strings) on a ring of virtual points; :meth:`get` maps a key to a node."""

    __slots__ = ("_hashes", "_nodes", "_owners", "vnodes")

    def __init__(self, nodes: Iterable[str] = (), vnodes: int = 100) -> None:
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
            raise ValueError(f"vnodes must be an int >= 1, got {vnodes!r}")
        self.vnodes = vnodes
        self._hashes: list[int] = []  # sorted ring points
        self._owners: list[str] = []  # _owners[i] owns _hashes[i]
        self._nodes: set[str] = set()
        for node in nodes:
            self.add(node)

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._nodes

    @property
    def nodes(self) -> frozenset[str]:
        return frozenset(self._nodes)

    def add(self, node: str) -> None:
        """Put ``node`` on the ring (no-op if it is there)."""
        if not isinstance(node, str):
            raise TypeError(f"ring node must be a str, got {node!r}")
        if node in self._nodes:
            return
        self._nodes.add(node)
        for i in range(self.vnodes):
            point = _hash(f"{node}#{i}")
            # Ties between points of different nodes (astronomically rare with 64 bits)
            # are broken by node name so the ring does not depend on insertion order.
            at = bisect.bisect_left(self._hashes, point)
            while at < len(self._hashes) and self._hashes[at] == point and self._owners[at] < node:
                at += 1
            self._hashes.insert(at, point)
            self._owners.insert(at, node)

    def remove(self, node: str) -> None:
        """Take ``node`` off the ring (no-op if it is absent)."""
        if node not in self._nodes:
            return
        self._nodes.discard(node)
        keep = [(h, o) for h, o in zip(self._hashes, self._owners, strict=True) if o != node]
        self._hashes = [h for h, _ in keep]
        self._owners = [o for _, o in keep]

    def get(self, key: str) -> str | None:
        """The node owning ``key``, or None when the ring is empty."""
        if not self._hashes:
            return None
        at = bisect.bisect_left(self._hashes, _hash(key))
        return self._owners[at % len(self._owners)]

    def iter_nodes(self, key: str) -> Iterator[str]:
        """Distinct nodes in ring order starting at ``key``'s owner: the fallback order
        when the owner cannot take the key (its seed peer failed the task)."""
        if not self._hashes:
            return
        start = bisect.bisect_left(self._hashes, _hash(key))
        seen: set[str] = set()
        count = len(self._owners)
        for step in range(count):
            owner = self._owners[(start + step) % count]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self._nodes):
                    return
