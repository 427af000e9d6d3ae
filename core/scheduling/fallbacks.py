"""What a peer falls back on when the swarm cannot serve it: the seed peer the hash ring
assigns to the task (triggered once, again if it is lost), the origin itself
(back-to-source, bounded per task), another round after a jittered wait, or failure.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from d7y.core.scheduling.config import SchedulerConfig
from d7y.core.scheduling.errors import fire_reported
from d7y.core.scheduling.geometry import task_meta
from d7y.core.scheduling.hashring import HashRing
from d7y.core.scheduling.load import LoadLedger
from d7y.core.scheduling.resource import Host, Peer, Task
from d7y.core.scheduling.results import NeedBackToSource, ScheduleFailed, ScheduleResult
from d7y.core.states import PeerEvent, PeerState

_BTS = PeerState.BACK_TO_SOURCE


class Fallbacks:
    """The seed-trigger, back-to-source and retry-limit decisions of one scheduler.
    ``hosts`` and ``ring`` are the scheduler's own (read here, never replaced)."""

    __slots__ = ("config", "hosts", "ledger", "ring", "rng")

    def __init__(
        self,
        config: SchedulerConfig,
        rng: random.Random,
        hosts: Mapping[str, Host],
        ring: HashRing,
        ledger: LoadLedger,
    ) -> None:
        self.config = config
        self.rng = rng
        self.hosts = hosts
        self.ring = ring
        self.ledger = ledger

    # -- the round limits --------------------------------------------------------------

    def limit_decision(self, peer: Peer) -> ScheduleResult | None:
        """NeedBackToSource or ScheduleFailed once the peer's failed rounds reach the
        limits (or it asked for the origin and may go); None to go on scheduling."""
        cfg = self.config
        rounds = peer.schedule_rounds
        if self.can_back_to_source(peer):
            if peer.need_back_to_source:
                return self.back_to_source(peer, "peer asked to go back to source")
            if rounds >= cfg.retry_back_to_source_limit:
                return self.back_to_source(
                    peer, f"{rounds} scheduling rounds failed (retry_back_to_source_limit)"
                )
        if rounds >= cfg.retry_limit:
            self.ledger.delete_in_edges(peer)
            peer.schedule_rounds = 0
            return ScheduleFailed(
                peer.id,
                task_meta(peer.task),
                f"{rounds} scheduling rounds failed (retry_limit) and the task may not go "
                f"back to source ({len(peer.task.back_to_source_peers)} peers already did)",
            )
        return None

    def retry_after(self) -> float:
        """Seconds until the next round: ``retry_interval`` +- ``retry_jitter``."""
        cfg = self.config
        return cfg.retry_interval * (1.0 + cfg.retry_jitter * (2.0 * self.rng.random() - 1.0))

    # -- back-to-source ----------------------------------------------------------------

    def can_back_to_source(self, peer: Peer) -> bool:
        """Seed peers always may (fetching from the origin is their job); a normal peer
        may while fewer than ``back_to_source_limit`` normal peers of the task did."""
        if peer.host.is_seed:
            return True
        bts = peer.task.back_to_source_peers
        return peer.id in bts or len(bts) < self.config.back_to_source_limit

    def back_to_source(self, peer: Peer, reason: str) -> NeedBackToSource:
        """Send the peer to the origin: its parents go, it counts against the limit."""
        self.ledger.delete_in_edges(peer)
        if peer.fsm.state is not _BTS:
            fire_reported(peer, PeerEvent.DOWNLOAD_BACK_TO_SOURCE)
        if not peer.host.is_seed:
            peer.task.back_to_source_peers.add(peer.id)
        peer.schedule_rounds = 0
        self.ledger.serving.refresh(peer)
        return NeedBackToSource(peer.id, task_meta(peer.task), reason)

    # -- the seed peer -----------------------------------------------------------------

    def seed_pending(self, task: Task, now: float) -> bool:
        """A seed peer is on the task (and did not fail) or was triggered recently."""
        if task.seed_peers:
            return True
        at = task.seed_triggered_at
        return (
            at is not None
            and now - at < self.config.seed_peer_trigger_timeout
            and task.seed_host_id in self.hosts
        )

    def seed_to_trigger(self, task: Task, now: float) -> Host | None:
        """The seed host to trigger for ``task`` now, or None (one is pending, or no seed
        host is usable). Ring order from the task ID, skipping seeds whose peer failed
        this task, so another seed takes over when the first one dies."""
        if self.seed_pending(task, now):
            return None
        for host_id in self.ring.iter_nodes(task.id):
            if host_id not in task.failed_seed_hosts:
                task.seed_host_id = host_id
                task.seed_triggered_at = now
                return self.hosts[host_id]
        return None

    @staticmethod
    def forget_seed_peer(task: Task, peer: Peer, failed: bool) -> None:
        """A seed peer stops serving the task; if it ``failed`` (or left unfinished), its
        host is skipped for this task so the next trigger goes to the next seed."""
        task.seed_peers.discard(peer.id)
        if failed:
            task.failed_seed_hosts.add(peer.host.id)
        if task.seed_host_id == peer.host.id and not task.seed_peers:
            task.seed_host_id = None
            task.seed_triggered_at = None


__all__ = ["Fallbacks"]
