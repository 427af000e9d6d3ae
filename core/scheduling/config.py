"""Every limit and default of the scheduler in one frozen dataclass.

Defaults follow Dragonfly v2's scheduler (``scheduler.yaml``) and DESIGN.md section 4:

- candidate parents: sample ``filter_parent_limit`` (15) peers, return the best
  ``candidate_parent_limit`` (3);
- retries: a peer gets ``retry_limit`` (5) scheduling rounds, ``retry_interval`` (0.5 s,
  with +-``retry_jitter`` relative jitter) apart; after ``retry_back_to_source_limit`` (4)
  failed rounds it goes back to source if fewer than ``back_to_source_limit`` (200) peers
  of the task already did;
- GC (Dragonfly's ``gc`` section): ``piece_download_timeout`` 30 min (a downloading peer
  that reported no piece for that long leaves), ``peer_ttl`` 24 h, ``host_ttl`` 1 h (a host
  that did not announce for that long leaves with its peers), ``task_ttl`` 24 h (Dragonfly
  reclaims a task once it has no peers; we also drop a task idle for ``task_ttl``, peers
  and all, so a task whose peers never report cannot pin memory forever).

Times are seconds (floats): core has no clock, callers pass ``now``.
"""

from __future__ import annotations

import dataclasses
import math

from d7y.core.pieces import MiB

#: Names accepted by :attr:`SchedulerConfig.algorithm` (see ``evaluator.make_evaluator``).
ALGORITHMS = ("load_aware", "base", "random")
#: Names accepted by :attr:`SchedulerConfig.policy`.
POLICIES = ("d7y", "dragonfly")

#: The fields whose default depends on the policy (a field left None takes it).
#: ``dragonfly`` is Dragonfly v2 as it ships (DESIGN.md section 4); ``d7y`` is ours
#: (docs/simulation.md, "The d7y policy", has the evidence for each value).
POLICY_DEFAULTS: dict[str, dict[str, object]] = {
    "dragonfly": {
        "filter_parent_limit": 15,
        "candidate_parent_limit": 3,
        "max_parents": 3,
        "concurrent_piece_count": 8,
        "register_backoff_min": 0.03,
        "register_backoff_max": 1.0,
        "blocklist_previous_parents": True,
        "sample_servable_only": False,
        "children_per_capacity": 0,
        "prefer_locality": False,
        "retry_interval": 0.5,
        "early_parents": False,
        "starting_overflow": False,
        "extra_parent_pieces": 0,
        "extra_parents_below": 0,
        "lagging_ratio": 0.0,
    },
    "d7y": {
        "filter_parent_limit": 40,
        "candidate_parent_limit": 4,
        "max_parents": 12,
        "concurrent_piece_count": 4,
        "register_backoff_min": 0.0,
        "register_backoff_max": 0.0,
        "blocklist_previous_parents": False,
        "sample_servable_only": True,
        "children_per_capacity": 1,
        "prefer_locality": True,
        "retry_interval": 0.2,
        "early_parents": False,
        "starting_overflow": True,
        "extra_parent_pieces": 32,
        "extra_parents_below": 4,
        "lagging_ratio": 0.9,
    },
}


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Scheduler limits; ``dataclasses.replace(cfg, x=...)`` derives a variant."""

    #: The rules around the evaluator: "d7y" (default) or "dragonfly" (Dragonfly v2 as it
    #: ships). Fields below left at None take the policy's value (POLICY_DEFAULTS).
    policy: str = "d7y"
    #: Evaluator ranking candidate parents: "load_aware" (default), "base", "random".
    algorithm: str = "load_aware"
    #: Peers of the task sampled per scheduling round before filtering (dragonfly 15).
    filter_parent_limit: int = None  # type: ignore[assignment]
    #: Parents returned (and DAG edges added) per successful round (dragonfly 3).
    candidate_parent_limit: int = None  # type: ignore[assignment]
    #: Most parents a peer holds at once. dragonfly: a round replaces the peer's parents
    #: (= candidate_parent_limit); d7y: a round keeps the parents that still serve and
    #: adds up to candidate_parent_limit new ones while below this.
    max_parents: int = None  # type: ignore[assignment]
    #: A registration's first round waits a random time in [min, max] seconds
    #: (dragonfly: 30 ms to 1 s per host registration; d7y: none).
    register_backoff_min: float = None  # type: ignore[assignment]
    register_backoff_max: float = None  # type: ignore[assignment]
    #: dragonfly: a reschedule blocklists every parent the peer was ever given.
    blocklist_previous_parents: bool = None  # type: ignore[assignment]
    #: d7y: a parent host takes at most this many times (its upload / the child's
    #: download) children, unless the child would have no parent at all (0: no cap,
    #: dragonfly).
    children_per_capacity: int = None  # type: ignore[assignment]
    #: d7y: rank candidates nearest first (same IDC, then location), by score within
    #: (dragonfly: the score alone, where IDC and location are weights).
    prefer_locality: bool = None  # type: ignore[assignment]
    #: A peer just given parents is a candidate before its download starts, always (off
    #: for both policies: it makes the relay trees of a download-bound crowd deeper).
    early_parents: bool = None  # type: ignore[assignment]
    #: With ``children_per_capacity``: a peer whose candidates are all full, a seed peer
    #: among them, takes a peer just given parents before over-filling one whose
    #: children would lose more than a third of their share (candidates.OVERFILL): it
    #: keeps a capped seed to one child in a registration burst (d7y: on; dragonfly:
    #: off). Applied to full normal peers too, it made a 1,000-host crowd 1.7 x slower
    #: (chains of not-yet-started parents; docs/simulation.md).
    starting_overflow: bool = None  # type: ignore[assignment]
    #: With ``children_per_capacity``: a peer that already has a parent may add a full
    #: normal parent while that parent's children number fewer than the task's pieces /
    #: this (d7y 32: a 1 GiB task of 256 pieces, 8 children; a 64 MiB task of 16
    #: pieces, none). 0: peers with parents take parents with room only.
    extra_parent_pieces: int = None  # type: ignore[assignment]
    #: The extra-parent rule serves peers with fewer parents than this (d7y 4): beyond,
    #: a peer takes parents with room only, so a full parent's spare places go to peers
    #: that have few (0: no bound).
    extra_parents_below: int = None  # type: ignore[assignment]
    #: With ``extra_parent_pieces``: a peer holding fewer pieces than this fraction of
    #: its sampled candidates' mean is behind the swarm, and may add a finished peer
    #: over its cap while that has fewer children than the extra-parent limit, however
    #: many parents it holds (d7y 0.9; 0: off). Finished peers whose children left sit
    #: idle while the last downloads share busy parents (docs/simulation.md).
    lagging_ratio: float = None  # type: ignore[assignment]
    #: Failed rounds after which the peer is told scheduling failed.
    retry_limit: int = 5
    #: Failed rounds after which the peer goes back to source (when allowed).
    retry_back_to_source_limit: int = 4
    #: Seconds a peer waits between rounds (returned as ``retry_after``; dragonfly 0.5,
    #: d7y 0.2: a flash crowd's first round finds nobody, the seed serves a moment later).
    retry_interval: float = None  # type: ignore[assignment]
    #: Relative jitter on ``retry_interval``: the wait is uniform in interval*(1 +- jitter),
    #: so peers that failed together do not come back together.
    retry_jitter: float = 0.2
    #: Normal peers of one task that may go back to source (seed peers are not counted).
    back_to_source_limit: int = 200
    #: Pieces a child downloads in parallel from one parent unless it registers its own
    #: value; each DAG edge reserves this many upload slots on the parent's host
    #: (dragonfly 8).
    concurrent_piece_count: int = None  # type: ignore[assignment]
    #: Piece length assumed for load reservation while a task's real one is unknown.
    default_piece_length: int = 4 * MiB
    #: Upload-slot limits used when a host announces none (Dragonfly's defaults).
    peer_concurrent_upload_limit: int = 200
    seed_peer_concurrent_upload_limit: int = 2000
    #: A running/back-to-source peer with no piece report for this long leaves at GC.
    piece_download_timeout: float = 30 * 60.0
    #: A peer not updated for this long leaves at GC.
    peer_ttl: float = 24 * 3600.0
    #: A host that has not announced for this long leaves (with its peers) at GC.
    host_ttl: float = 3600.0
    #: A task not updated for this long is removed at GC (a task without peers goes at
    #: once, as in Dragonfly).
    task_ttl: float = 24 * 3600.0
    #: Piece costs kept per peer for bad-parent detection (Dragonfly's 2000).
    piece_cost_window: int = 2000
    #: Piece failures from one parent before the child blocklists it (Dragonfly: 1).
    blocklist_after_piece_failures: int = 1
    #: Seconds after which a seed peer trigger that produced no seed peer is re-issued.
    seed_peer_trigger_timeout: float = 60.0
    #: Virtual nodes per seed host on the consistent-hash ring.
    hash_ring_vnodes: int = 100
    #: Sample candidates among the peers able to serve only (d7y), not among all peers of
    #: the task (dragonfly), so a round in a big swarm does not spend its sample on
    #: peers that cannot be parents.
    sample_servable_only: bool = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy {self.policy!r} is unknown: use one of {POLICIES}")
        for name, value in POLICY_DEFAULTS[self.policy].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm {self.algorithm!r} is unknown: use one of {ALGORITHMS}")
        for name in (
            "filter_parent_limit",
            "candidate_parent_limit",
            "max_parents",
            "retry_limit",
            "concurrent_piece_count",
            "default_piece_length",
            "peer_concurrent_upload_limit",
            "seed_peer_concurrent_upload_limit",
            "piece_cost_window",
            "blocklist_after_piece_failures",
            "hash_ring_vnodes",
        ):
            _check_int(name, getattr(self, name), minimum=1)
        for name in (
            "retry_back_to_source_limit",
            "back_to_source_limit",
            "children_per_capacity",
            "extra_parent_pieces",
            "extra_parents_below",
        ):
            _check_int(name, getattr(self, name), minimum=0)
        for name in (
            "retry_interval",
            "piece_download_timeout",
            "peer_ttl",
            "host_ttl",
            "task_ttl",
            "seed_peer_trigger_timeout",
        ):
            _check_seconds(name, getattr(self, name))
        _check_seconds("register_backoff_min", self.register_backoff_min)
        _check_seconds("register_backoff_max", self.register_backoff_max)
        if self.register_backoff_max < self.register_backoff_min:
            raise ValueError(
                f"register_backoff_max ({self.register_backoff_max}) must be >= "
                f"register_backoff_min ({self.register_backoff_min})"
            )
        if self.max_parents < self.candidate_parent_limit:
            raise ValueError(
                f"max_parents ({self.max_parents}) must be >= candidate_parent_limit "
                f"({self.candidate_parent_limit})"
            )
        if not isinstance(self.starting_overflow, bool):
            raise TypeError(f"starting_overflow must be a bool, got {self.starting_overflow!r}")
        if not isinstance(self.early_parents, bool):
            raise TypeError(f"early_parents must be a bool, got {self.early_parents!r}")
        if not isinstance(self.prefer_locality, bool):
            raise TypeError(f"prefer_locality must be a bool, got {self.prefer_locality!r}")
        if not isinstance(self.blocklist_previous_parents, bool):
            raise TypeError(
                "blocklist_previous_parents must be a bool, got "
                f"{self.blocklist_previous_parents!r}"
            )
        ratio = self.lagging_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
            raise ValueError(f"lagging_ratio must be a number in [0, 1] (0: off), got {ratio!r}")
        _check_seconds("retry_jitter", self.retry_jitter)
        if self.retry_jitter > 1:
            raise ValueError(f"retry_jitter must be in [0, 1], got {self.retry_jitter}")
        if not isinstance(self.sample_servable_only, bool):
            raise TypeError(
                f"sample_servable_only must be a bool, got {self.sample_servable_only!r}"
            )


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
