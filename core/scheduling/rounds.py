"""One scheduling round for a peer: check the limits, keep or drop its parents, choose
new ones, reserve their load, and answer (parents, retry later, or a fallback)."""

from __future__ import annotations

from d7y.core.scheduling.candidates import ParentSelector
from d7y.core.scheduling.config import SchedulerConfig
from d7y.core.scheduling.fallbacks import Fallbacks
from d7y.core.scheduling.geometry import task_meta
from d7y.core.scheduling.load import LoadLedger
from d7y.core.scheduling.resource import Peer
from d7y.core.scheduling.results import NormalTask, ParentInfo, Retry, ScheduleResult


def parent_info(parent: Peer, score: float) -> ParentInfo:
    """What a child is told of a parent chosen for it."""
    host = parent.host
    return ParentInfo(
        parent.id,
        host.id,
        host.ip,
        host.port,
        host.download_port,
        score,
        host.tx_bandwidth,
        host.upload_limit_bps,
        host.is_seed,
    )


class Rounds:
    """Runs scheduling rounds with one scheduler's selector, fallbacks and ledger."""

    __slots__ = ("config", "fallbacks", "ledger", "selector")

    def __init__(
        self,
        config: SchedulerConfig,
        selector: ParentSelector,
        fallbacks: Fallbacks,
        ledger: LoadLedger,
    ) -> None:
        self.config = config
        self.selector = selector
        self.fallbacks = fallbacks
        self.ledger = ledger

    def run(self, peer: Peer) -> ScheduleResult:
        """One round. dragonfly: the peer's parents are replaced by the best
        ``candidate_parent_limit`` candidates. d7y: parents that still serve are kept and
        up to ``candidate_parent_limit`` new ones are added while the peer has fewer
        than ``max_parents``; a round that adds nobody while the peer still has parents
        is not a failed round (it has parents to download from)."""
        fallbacks = self.fallbacks
        terminal = fallbacks.limit_decision(peer)
        if terminal is not None:
            return terminal
        cfg = self.config
        task = peer.task
        additive = cfg.max_parents > cfg.candidate_parent_limit
        if additive:
            self._drop_unusable_parents(peer)
            room = cfg.max_parents - task.dag.in_degree(peer.id)
            limit = min(cfg.candidate_parent_limit, room)
        else:
            self.ledger.delete_in_edges(peer)
            limit = cfg.candidate_parent_limit
        chosen = self.selector.candidate_parents(peer, limit) if limit > 0 else []
        if chosen or (additive and task.dag.in_degree(peer.id)):
            peer.schedule_rounds = 0
            infos = []
            given = peer.given_parents
            if given is None and cfg.blocklist_previous_parents:
                given = peer.given_parents = set()
            add_edge = self.ledger.add_edge
            for parent, score in chosen:
                infos.append(parent_info(parent, score))
                add_edge(parent, peer)
                if given is not None:
                    given.add(parent.id)
            return NormalTask(peer.id, task_meta(task), tuple(infos))
        peer.schedule_rounds += 1
        terminal = fallbacks.limit_decision(peer)
        if terminal is not None:
            return terminal
        return Retry(
            peer.id,
            task_meta(task),
            fallbacks.retry_after(),
            peer.schedule_rounds,
            "no candidate parent passed the filters",
        )

    def _drop_unusable_parents(self, peer: Peer) -> None:
        """Remove the in-edges from parents that can no longer serve (left the
        servable set, became bad or blocklisted)."""
        task = peer.task
        in_edges = task.dag.parents(peer.id)
        if not in_edges:
            return
        is_bad = self.selector.evaluator.is_bad_parent
        servable = task.servable._index
        starting = task.starting._index  # a parent of last resort about to serve
        for pid in list(in_edges):
            parent = task.peers[pid]
            gone = parent not in servable and parent not in starting
            if pid in peer.blocklist or gone or is_bad(parent):
                self.ledger.delete_edge(task, pid, peer)


__all__ = ["Rounds", "parent_info"]
