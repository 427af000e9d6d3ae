"""Candidate parents for a peer: sample the task's peers, filter, cap by capacity, rank.

DESIGN section 4: sample ``filter_parent_limit`` peers of the task; drop the peer
itself, its host, its blocklist, peers that cannot serve, bad parents and any edge that
would close a cycle; (d7y) drop parents already full; rank the rest (ranking.py).
"""

from __future__ import annotations

import random

from d7y.core.scheduling.config import SchedulerConfig
from d7y.core.scheduling.evaluator import Evaluator
from d7y.core.scheduling.ranking import nearness, rank
from d7y.core.scheduling.resource import Host, Peer, Task
from d7y.core.scheduling.serving import Servability, is_starting
from d7y.core.states import PeerState

_SUCCEEDED = PeerState.SUCCEEDED


def _intake(child: Host) -> int:
    """The rate a child takes pieces at: its announced download, else its upload (0:
    unknown)."""
    return child.download_limit_bps or child.upload_limit_bps


def children_cap(parent: Host, child: Host, factor: int) -> int:
    """Children a parent host feeds usefully: its upload over the rate at which the child
    takes pieces and passes them on, times ``factor``. That rate is the child's download,
    or its upload when slower (or when the download is not announced): a 1 Gbit/s seed
    feeding children that download at 1 Gbit/s but upload at 200 Mbit/s takes five, so
    five relays carry its distinct pieces instead of one (Kumar and Ross: the server
    splits its upload by its children's uploads). A parent of unknown upload is not
    capped, a child of unknown speed takes a whole parent."""
    up = parent.upload_limit_bps
    if up <= 0:
        return 1 << 30
    down = _intake(child)
    relay = child.upload_limit_bps
    if 0 < relay < down:
        down = relay
    if down <= 0:
        return factor
    return factor * max(1, up // down)


#: Over-filling a parent is the lesser evil while it leaves its children at least 1/1.5
#: of their share: a 10 Gbit/s seed feeding 1 Gbit/s children takes an 11th child (10 %
#: less each), a capped seed with one child does not take a second (half each).
OVERFILL = 1.5


def _overfill(candidates: list[Peer], child: Host, factor: int) -> float:
    """Children over capacity that the least loaded candidate would have with one more."""
    return min(
        (c.host.concurrent_upload_count + 1) / children_cap(c.host, child, factor)
        for c in candidates
    )


class ParentSelector:
    """Chooses parents for one scheduler: its config, its ``rng`` (the only randomness:
    the sample) and its evaluator (bad parents, scores)."""

    __slots__ = ("config", "evaluator", "rng", "serving")

    def __init__(
        self,
        config: SchedulerConfig,
        rng: random.Random,
        evaluator: Evaluator,
        serving: Servability,
    ) -> None:
        self.config = config
        self.rng = rng
        self.evaluator = evaluator
        self.serving = serving

    def sample(self, peer: Peer) -> list[Peer]:
        """Up to ``filter_parent_limit`` distinct peers of the task, uniformly at random.

        For a large pool, draws indexes with ``rng.random()`` until k distinct ones
        (expected k + k^2/2n draws): several times cheaper than ``random.sample``'s
        general path, and the distribution is the same (uniform k-subsets, random
        order; the float-to-index step has a bias below 2**-40 for any real pool).
        """
        task = peer.task
        pool = task.servable.items if self.config.sample_servable_only else task.peer_list.items
        k = self.config.filter_parent_limit
        n = len(pool)
        if n <= 4 * k:
            return self.rng.sample(pool, k if k < n else n)
        rand = self.rng.random
        chosen: set[int] = set()
        out: list[Peer] = []
        while len(out) < k:
            i = int(rand() * n)
            if i not in chosen:
                chosen.add(i)
                out.append(pool[i])
        return out

    def filter(
        self,
        peer: Peer,
        sample: list[Peer],
        succeeded_only: bool,
        starting: bool = False,
        acyclic: bool = True,
    ) -> list[Peer]:
        """DESIGN's filters, in order: the peer itself, its host, its blocklist, peers that
        cannot serve, bad parents, and any edge that would close a cycle (Dragonfly has
        no upload-slot filter: the limits exist but the filter does not read them), and
        for the d7y policy the peer's current parents. With ``starting`` the sample is
        of starting peers (:func:`is_starting`), which stand in for servable ones. With
        ``acyclic`` False the cycle test is left to the caller (:meth:`_acyclic`), to be
        made on fewer candidates."""
        host = peer.host
        blocklist = peer.blocklist
        task = peer.task
        # membership without a method call (hot path)
        servable = task.starting._index if starting else task.servable._index
        in_edges = task.dag._parents
        is_bad = self.evaluator.is_bad_parent
        about_to_serve = self.serving.about_to_serve
        kept: list[Peer] = []
        current = in_edges[peer.id]
        for cand in sample:
            if cand is peer or cand.host is host or cand.id in blocklist or cand.id in current:
                continue
            if cand not in servable:
                continue
            if succeeded_only and cand.fsm.state is not _SUCCEEDED:
                continue
            # A starting peer is "bad" by state alone (Dragonfly: ReceivedNormal).
            if is_bad(cand) and not (starting or about_to_serve(cand)):
                continue
            kept.append(cand)
        return self._acyclic(peer, kept) if acyclic else kept

    @staticmethod
    def _acyclic(peer: Peer, candidates: list[Peer]) -> list[Peer]:
        """The candidates that would not close a cycle as parents of ``peer``.

        A cycle needs a path peer -> ... -> cand, so cand must have a parent: roots
        (succeeded, back-to-source and seed peers, usually) are safe without a walk, and
        so is every candidate of a peer with no children. The others are asked of the
        DAG (:meth:`DAG.reachable_among`): its topological order clears those ordered
        before the peer without a walk, and bounds the walks for the rest (from the peer
        and back from the candidate, whichever ends first). In a dense swarm the peer's
        whole descendants are most of the DAG (1,000 running peers, 3 parents each), and
        walking them all was the largest cost of a round.
        """
        dag = peer.task.dag
        in_edges = dag._parents
        if not candidates or not dag.out_degree(peer.id):
            return candidates
        suspects = [cand.id for cand in candidates if in_edges[cand.id]]
        if not suspects:
            return candidates
        descendants = dag.reachable_among(peer.id, suspects)
        if not descendants:
            return candidates
        return [cand for cand in candidates if cand.id not in descendants]

    def candidate_parents(self, peer: Peer, limit: int) -> list[tuple[Peer, float]]:
        """The best ``limit`` new parents for a peer in a scheduling round, scored."""
        factor = self.config.children_per_capacity
        parents = len(peer.task.dag._parents[peer.id])
        # d7y with parents: the cycle test runs on the few candidates the round may add
        # (often none: a top-up round of a peer whose candidates are all full), not on
        # the sample; at 10,000 hosts the walk over its descendants was a third of the
        # run (bench/RESULTS.md). Its lagging test then reads the sample before the cycle
        # test, descendants included: they are as good an estimate of the swarm.
        late_cycle_test = bool(factor and parents)
        candidates = self.filter(
            peer, self.sample(peer), succeeded_only=False, acyclic=not late_cycle_test
        )
        if not candidates:
            return []
        if factor:
            # d7y: a parent takes about as many children as its upload can feed at their
            # download speed (a 16 MiB/s seed with fast children: one; a 10 Gbit/s seed
            # with 1 Gbit/s children: ten, times the factor), so its bandwidth goes to
            # few children that relay, instead of trickling to all. Over-full parents
            # are used only when the peer would otherwise have none, or as an extra
            # parent (_extra_parents).
            host = peer.host
            room = self._with_room(candidates, host, factor)
            if (
                not room
                and self.config.starting_overflow
                and parents == 0
                and any(c.host.is_seed for c in candidates)
                and _overfill(candidates, host, factor) > OVERFILL
            ):
                # Every servable candidate is full, and one more child would cut its
                # children's share deeply (a registration burst at a capped seed: the
                # seed took its one child a moment ago). A peer just given parents
                # relays as soon as its first piece lands: take one with room instead.
                # With nearest-first ranking, only as near as the nearest full parent:
                # a chain that crosses an IDC link to spare a local seed is slower.
                room = self._with_room(self._starting_candidates(peer), host, factor)
                if room and self.config.prefer_locality:
                    nearest = max(nearness(c.host, host) for c in candidates)
                    room = [c for c in room if nearness(c.host, host) >= nearest]
            if parents:
                candidates = self._acyclic(
                    peer,
                    self._extra_parents(
                        candidates, room, peer.task, host, parents, self._lagging(peer, candidates)
                    ),
                )
            else:
                candidates = room or candidates
            if not candidates:
                return []
        return self._rank(peer, candidates, limit)

    def _lagging(self, peer: Peer, candidates: list[Peer]) -> bool:
        """The peer holds fewer pieces than ``lagging_ratio`` x its candidates' mean (a
        uniform sample of the servable peers: an estimate of where the swarm is)."""
        ratio = self.config.lagging_ratio
        if not ratio:
            return False
        total = 0
        for c in candidates:
            total += c.finished_count
        return peer.finished_count < ratio * total / len(candidates)

    def _extra_parents(
        self,
        candidates: list[Peer],
        room: list[Peer],
        task: Task,
        child: Host,
        parents: int,
        lagging: bool = False,
    ) -> list[Peer]:
        """Candidates a peer that already has a parent may add: those with room, and
        full normal peers (seed peers stay at their cap: their upload is the swarm's only
        source of new pieces) that pass one of two tests. A first parent keeps to the
        cap: it decides where the peer sits in the relay tree; an extra one only adds
        inflow, at a cost to the parent's other children.

        - Many pieces: the peer has fewer than ``extra_parents_below`` parents and the
          parent's children number fewer than the task's pieces over
          ``extra_parent_pieces``. Each child more makes every piece the parent relays
          take that much longer to pass, which costs little while one piece is a small
          part of the task: a 1 GiB task (256 pieces) lets a parent take 8 children, a
          64 MiB one (16 pieces) none beyond its cap, and its tree stays a chain of
          whole-speed links. Flash crowd of 100: 13.3 -> 10.4 s; multi-IDC 17.4 ->
          13.0 s; upload-bound 68.1 -> 56.0 s (docs/simulation.md).
        - Second parent: the peer has one parent, a chain link (it gets only what that
          parent gets), and this one could feed it alone (upload >= its download), so
          the inflow doubles at a small cost to the parent's other child. Parents slower
          than the child do not pass: splitting them slows the chains they feed (an
          upload-bound crowd). Flash crowd of 100: 15.4 -> 13.2 s.
        - Lagging (``lagging``, :meth:`_lagging`): a peer behind the swarm may add a
          finished peer over its cap while that has fewer children than the piece-count
          limit, however many parents it holds. Late in a crowd the peers that finished
          first keep few children, or none, while the last downloads hold four parents
          that feed five children each (upload-bound, seed 2: the slowest peers held
          the same four parents for 50 s, at 4.7 pieces/s against the fastest's 8.8;
          with the download loop's top-up asks, worst of seeds 1-3 1.90 -> 1.76 x T_min).
        """
        divisor = self.config.extra_parent_pieces
        below = self.config.extra_parents_below
        pieces = task.piece_count or 0
        # A peer that holds enough parents leaves the full parents' spare places to
        # those that have few: taken first come, first served, they went to the peers
        # that registered early (10,000 hosts: a peer with two parents found no third
        # for 23 s while others held twelve; flash crowd of 1,000: 1.52 -> 1.46 x T_min).
        limit = pieces // divisor if divisor and (not below or parents < below) else 0
        down = _intake(child)
        second = parents == 1 and down > 0
        behind = pieces // divisor if lagging and divisor else 0
        if not limit and not second and not behind:
            return room
        return [
            c
            for c in candidates
            if c in room
            or (
                not c.host.is_seed
                and (
                    c.host.concurrent_upload_count < limit
                    or (second and c.host.upload_limit_bps >= down)
                    or (
                        behind
                        and c.fsm.state is _SUCCEEDED
                        and c.host.concurrent_upload_count < behind
                    )
                )
            )
        ]

    @staticmethod
    def _with_room(candidates: list[Peer], child: Host, factor: int) -> list[Peer]:
        return [
            c
            for c in candidates
            if c.host.concurrent_upload_count < children_cap(c.host, child, factor)
        ]

    def _starting_candidates(self, peer: Peer) -> list[Peer]:
        """Up to ``filter_parent_limit`` starting peers of the task (sampled only when
        there are more), filtered like any candidate."""
        pool = peer.task.starting.items
        if not pool:
            return []
        k = self.config.filter_parent_limit
        sample = self.rng.sample(pool, k) if len(pool) > k else list(pool)
        return [
            c
            for c in self.filter(peer, sample, succeeded_only=False, starting=True)
            if is_starting(c)
        ]

    def success_parent(self, peer: Peer) -> tuple[Peer, float] | None:
        """One succeeded parent (for a SMALL task's one-piece answer), or None."""
        candidates = self.filter(peer, self.sample(peer), succeeded_only=True)
        if not candidates:
            return None
        return self._rank(peer, candidates, 1)[0]

    def _rank(self, peer: Peer, candidates: list[Peer], limit: int) -> list[tuple[Peer, float]]:
        return rank(peer, candidates, limit, self.evaluator.score, self.config.prefer_locality)


__all__ = ["ParentSelector", "children_cap"]
