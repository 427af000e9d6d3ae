"""Ranking filtered candidates: by the evaluator's score, nearest first for d7y."""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter

from d7y.core.scheduling.resource import Host, Peer


def nearness(parent: Host, child: Host) -> int:
    """Same IDC (case-insensitive) counts most, then equal leading location elements."""
    near = 8 if parent.idc_key and parent.idc_key == child.idc_key else 0
    for a, b in zip(parent.location_parts, child.location_parts, strict=False):
        if a != b:
            break
        near += 1
    return near


def rank(
    peer: Peer,
    candidates: list[Peer],
    limit: int,
    score: Callable[[Peer, Peer, int], float],
    prefer_locality: bool,
) -> list[tuple[Peer, float]]:
    """The best ``limit`` candidates for ``peer`` with their scores, best first."""
    total = peer.task.piece_count or 0
    scored = [(cand, score(cand, peer, total)) for cand in candidates]
    if prefer_locality:
        # d7y: nearer first (same IDC, then more equal leading location elements),
        # the score within a tier: on an oversubscribed network (rack uplinks, IDC
        # links) each rack should pull a piece across its uplink about once and
        # share it inside; a weight in a sum cannot guarantee that.
        host = peer.host
        scored.sort(key=lambda x: (nearness(x[0].host, host), x[1]), reverse=True)
    else:
        # Stable, so equal scores keep the (random) sample order.
        scored.sort(key=itemgetter(1), reverse=True)
    return scored[:limit]


__all__ = ["nearness", "rank"]
