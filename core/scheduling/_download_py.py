"""The peer's download loop, sans-IO: one state machine for dfdaemon and the simulator.

One :class:`Download` per download. The driver (dfdaemon's P2P path, or a simulated
peer) feeds it what happens -- parents given by the scheduler, pieces parents announce,
pieces that arrive, fail or come back "busy", parents that go away, timers -- and carries
out the actions it returns: fetch a piece from a parent, cancel a fetch, report a failed
piece, follow or stop following a parent, ask the scheduler for parents, go to the
origin. The piece and parent choice inside is the :class:`PiecePicker`'s.

Everything that decides *when* is here and nowhere else: request timeouts (fixed, or
scaled with the download's measured piece cost so that slow is not failed), the
reschedule rules, the stall fallback to the origin, the limit on reschedules, the
"busy" back-off. Two policies (DESIGN.md section 4):

- ``dragonfly`` (Dragonfly's Rust client): 8 pieces in flight, dispatched in announcement
  order once every parent announced a piece or 100 ms after the first did; a parent's
  stream ends after 360 s without news; the peer asks for new parents only when all its
  parents' streams have ended, at most 5 times, and then goes to the origin; no short
  stall fallback.
- ``d7y`` (ours): rarest first, at most ``per_parent_limit`` requests at one parent, busy
  parents skipped for a moment, request timeouts that grow with the measured piece cost,
  and more parents asked for whenever the download has nothing it can request.

Times are seconds from the driver's clock (``now`` arguments); randomness comes from the
injected ``random.Random``.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable
from types import ModuleType
from typing import Any, NamedTuple

from d7y.core.scheduling.origin_window import OriginWindow
from d7y.core.scheduling.picker import PiecePicker

# --------------------------------------------------------------------- actions --


class Fetch(NamedTuple):
    """Request ``piece`` from ``parent`` (the origin's name when going to source)."""

    piece: int
    parent: str


class Cancel(NamedTuple):
    """Abandon the outstanding request (piece, parent); its answer is to be ignored."""

    piece: int
    parent: str


class ReportFailed(NamedTuple):
    """Tell the scheduler a piece failed from ``parent`` (PieceFailed)."""

    piece: int
    parent: str
    temporary: bool
    reason: str


class Follow(NamedTuple):
    """Subscribe to ``parent``'s piece announcements."""

    parent: str


class Unfollow(NamedTuple):
    """Stop following ``parent`` (it was dropped)."""

    parent: str


class AskParents(NamedTuple):
    """Ask the scheduler for parents (Reschedule), naming the ``bad`` ones."""

    bad: tuple[str, ...]
    reason: str


class GoToOrigin(NamedTuple):
    """The download falls back to the origin for the pieces it lacks."""

    reason: str


class Finished(NamedTuple):
    """Every piece is held."""


# Failure kinds a driver reports (the piece client's error kinds).
BUSY = "busy"  # the parent's upload slots are full: ask elsewhere, not a failure
NOT_FOUND = "not_found"  # the parent does not hold the piece (evicted, lied)
CORRUPT = "corrupt"  # the bytes do not match the recorded digest
CONNECTION = "connection"  # the parent cannot be reached / the connection broke
ERROR = "error"  # anything else the parent answered
KINDS = (BUSY, NOT_FOUND, CORRUPT, CONNECTION, ERROR)

# States
P2P = "p2p"
ORIGIN = "origin"
DONE = "done"


# ---------------------------------------------------------------------- config --

DOWNLOAD_POLICY_DEFAULTS: dict[str, dict[str, Any]] = {
    "dragonfly": {
        "max_in_flight": 8,
        "per_parent_limit": 0,
        "order": "announced",
        "dispatch_wait": 0.1,
        "piece_timeout": 360.0,
        "timeout_factor": 0.0,
        "stall_timeout": math.inf,
        "reschedule_when": "orphaned",
        "max_reschedules": 5,
        "parent_idle_timeout": 360.0,
        "origin_in_flight": 8,
        "origin_window": False,
        "min_parents": 0,
        "top_up_parents": 0,
        "top_up_pieces": 0,
        "min_parents_pieces": 0,
    },
    "d7y": {
        "max_in_flight": 16,
        "per_parent_limit": 1,
        "order": "rarest",
        "dispatch_wait": 0.0,
        "piece_timeout": 30.0,
        "timeout_factor": 4.0,
        "stall_timeout": 120.0,
        "reschedule_when": "idle",
        "max_reschedules": 0,
        "parent_idle_timeout": math.inf,
        "origin_in_flight": 8,
        "origin_window": True,
        "min_parents": 2,
        "top_up_parents": 4,
        "top_up_pieces": 16,
        "min_parents_pieces": 0,
    },
}
DOWNLOAD_POLICIES = tuple(DOWNLOAD_POLICY_DEFAULTS)


@dataclasses.dataclass(frozen=True, slots=True)
class DownloadConfig:
    """The download loop's rules; fields left None take the policy's value."""

    policy: str = "d7y"
    #: Requests outstanding at once (dragonfly 8).
    max_in_flight: int = None  # type: ignore[assignment]
    #: Requests outstanding at one parent (0: no limit; dragonfly 0).
    per_parent_limit: int = None  # type: ignore[assignment]
    #: "rarest" first, or "announced" order (dragonfly).
    order: str = None  # type: ignore[assignment]
    #: order="announced": a piece waits this long for every parent to announce it.
    dispatch_wait: float = None  # type: ignore[assignment]
    #: Seconds after which a request times out at the least (dragonfly 360).
    piece_timeout: float = None  # type: ignore[assignment]
    #: > 0: a request times out after max(piece_timeout, factor x the download's mean
    #: piece cost), so a download on slow links is not failed for being slow.
    timeout_factor: float = None  # type: ignore[assignment]
    #: Nothing in flight and no piece for this long: go to the origin (inf: never).
    stall_timeout: float = None  # type: ignore[assignment]
    #: "idle": ask for more parents whenever nothing can be requested; "orphaned":
    #: only once every parent's stream ended (dragonfly).
    reschedule_when: str = None  # type: ignore[assignment]
    #: Reschedules before the download goes to the origin (0: no limit; dragonfly 5).
    max_reschedules: int = None  # type: ignore[assignment]
    #: A parent that announced and served nothing for this long is dropped (its stream
    #: ended; dragonfly 360 s; inf: never).
    parent_idle_timeout: float = None  # type: ignore[assignment]
    #: d7y: while it has fewer parents than this, the download asks for more (every
    #: reschedule_interval) even when busy: one shared parent is a slow one (0: only
    #: when idle).
    min_parents: int = None  # type: ignore[assignment]
    #: ``min_parents`` holds for downloads of more than this many pieces only; one of at
    #: most this many asks for parents when idle, so a parent that frees up goes to a
    #: peer starved of pieces, not to one its relay chain already feeds at full speed
    #: (0: every download, as both policies). At 16 the simulated shaped swarms gain
    #: (netns-shaped-16 1.77 -> 1.69 x T_min) but the real N = 16 netns bench lost 8 %
    #: (2.09-2.10 -> 2.28 x, bench/RESULTS.md), so it stays off.
    min_parents_pieces: int = None  # type: ignore[assignment]
    #: d7y: a download that holds at least this many parents but cannot keep
    #: ``max_in_flight`` requests going asks for more every ``reschedule_interval``,
    #: busy or not (0: never). Its parents may all be busy feeding other children while
    #: peers that finished sit idle: the scheduler then offers parents with room, and
    #: to a peer behind the swarm finished ones over their cap (SchedulerConfig
    #: ``lagging_ratio``). Below this many parents the ``min_parents`` and idle rules
    #: ask, and the scheduler's extra-parent rule answers: asking more often there
    #: over-fills parents (docs/simulation.md).
    top_up_parents: int = None  # type: ignore[assignment]
    #: The top-up asks are for downloads of more than this many pieces only (d7y 16: a
    #: 64 MiB task of 4 MiB pieces asks when idle). In a relay chain of few pieces a
    #: busy peer's ask takes the parent a finished peer frees from an idle one:
    #: netns-shaped-16 1.77 -> 1.88 x T_min with them (docs/simulation.md).
    top_up_pieces: int = None  # type: ignore[assignment]
    #: Pieces fetched from the origin at once (the most, with ``origin_window``).
    origin_in_flight: int = None  # type: ignore[assignment]
    #: d7y: a download others wait for (a seed peer's, one streaming to a proxy client)
    #: starts with one origin range in flight and opens up to ``origin_in_flight`` only
    #: while that raises its throughput (core/scheduling/origin_window.py): parallel
    #: ranges share the origin and land together, late, so nothing can be relayed
    #: until they do. dragonfly: a fixed ``origin_in_flight``.
    origin_window: bool = None  # type: ignore[assignment]
    #: At most one Reschedule per this many seconds unless it names bad parents.
    reschedule_interval: float = 1.0
    #: A parent that answered "busy" is not asked again for this long.
    busy_backoff: float = 0.1
    #: Failures in a row after which a parent is dropped as bad.
    failure_limit: int = 3
    #: Request a straggling piece from a second parent once the rest is in flight.
    endgame: bool = True
    #: Cut-through relaying (opt-in; the simulator models it, dfdaemon runs it with
    #: ``download.cut_through``): parents announce a piece when they start receiving it
    #: (:meth:`Download.parent_receiving`) and serve it while it arrives, so a child
    #: may request it from a parent still receiving it when no parent holds it whole;
    #: the child checks the piece's digest at the end as always (docs/simulation.md).
    cut_through: bool = False

    def __post_init__(self) -> None:
        if self.policy not in DOWNLOAD_POLICY_DEFAULTS:
            raise ValueError(
                f"download policy {self.policy!r} is unknown: use one of {DOWNLOAD_POLICIES}"
            )
        for name, value in DOWNLOAD_POLICY_DEFAULTS[self.policy].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for name in ("max_in_flight", "failure_limit", "origin_in_flight"):
            _check_int(name, getattr(self, name), 1)
        for name in (
            "per_parent_limit",
            "max_reschedules",
            "min_parents",
            "min_parents_pieces",
            "top_up_parents",
            "top_up_pieces",
        ):
            _check_int(name, getattr(self, name), 0)
        for name in ("origin_window", "cut_through"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.order not in ("rarest", "announced"):
            raise ValueError(f"order must be 'rarest' or 'announced', got {self.order!r}")
        if self.reschedule_when not in ("idle", "orphaned"):
            raise ValueError(
                f"reschedule_when must be 'idle' or 'orphaned', got {self.reschedule_when!r}"
            )
        for name in ("dispatch_wait", "timeout_factor", "reschedule_interval", "busy_backoff"):
            _check_seconds(name, getattr(self, name), allow_inf=False)
        for name in ("piece_timeout", "stall_timeout", "parent_idle_timeout"):
            _check_seconds(name, getattr(self, name), allow_inf=name != "piece_timeout")
        if self.piece_timeout <= 0:
            raise ValueError(f"piece_timeout must be > 0 seconds, got {self.piece_timeout}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_seconds(name: str, value: object, allow_inf: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (not allow_inf and math.isinf(value)):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value}")


# ------------------------------------------------------------------ the machine --

#: Weight of the newest piece cost in the running mean that scales timeouts.
COST_EWMA = 0.2


class Download:
    """One download's loop. ``origin``: the name under which the driver fetches from
    the origin through this same machine (the simulator), or None when the driver has
    its own origin path and only needs the :class:`GoToOrigin` action (dfdaemon)."""

    __slots__ = (
        "_bitmaps",
        "bad",
        "config",
        "held",
        "last_progress",
        "last_reschedule",
        "mean_cost",
        "min_parents",
        "news_timed",
        "origin",
        "origin_reason",
        "origin_tokens",
        "origin_window",
        "parents",
        "picker",
        "reschedules",
        "rng",
        "size",
        "state",
        "streaming",
        "top_up_parents",
    )

    def __init__(
        self,
        piece_count: int,
        rng: random.Random,
        config: DownloadConfig | None = None,
        *,
        now: float,
        have: Any = None,
        origin: str | None = None,
        streaming: bool = False,
        bitmaps: ModuleType | None = None,
    ) -> None:
        self.config = config if config is not None else DownloadConfig()
        if not isinstance(self.config, DownloadConfig):
            raise TypeError(f"config must be a DownloadConfig, got {config!r}")
        if bitmaps is None:
            from d7y.ext.bitmap import backend as bitmaps
        self._bitmaps = bitmaps
        cfg = self.config
        self.size = piece_count
        self.rng = rng
        self.origin = origin
        self.streaming = streaming
        self.picker = PiecePicker(
            piece_count,
            rng,
            have=have,
            max_in_flight=cfg.max_in_flight,
            streaming=streaming,
            piece_timeout=cfg.piece_timeout,
            failure_limit=cfg.failure_limit,
            endgame=cfg.endgame,
            per_parent_limit=cfg.per_parent_limit,
            order=cfg.order,
            dispatch_wait=cfg.dispatch_wait,
            bitmaps=bitmaps,
        )
        self.state = DONE if self.picker.done else P2P
        #: The pieces held (the picker's bitmap, live; read only).
        self.held = self.picker.held
        #: parent -> when it was last heard from (an announcement, a piece). Kept up to
        #: date only under a parent idle timeout (``news_timed``), the one rule that reads
        #: it; else the time it was followed. A swarm announces every piece to every
        #: neighbour: the store and its float were 4 % of a large swarm run.
        self.parents: dict[str, float] = {}
        self.news_timed = cfg.parent_idle_timeout < math.inf
        self.bad: set[str] = set()
        self.last_progress = now
        self.last_reschedule = -math.inf
        self.reschedules = 0
        #: ``config.min_parents``, or 0 for a download of few pieces (min_parents_pieces).
        self.min_parents = cfg.min_parents if piece_count > cfg.min_parents_pieces else 0
        #: ``config.top_up_parents``, or 0 for a download of few pieces (top_up_pieces).
        self.top_up_parents = cfg.top_up_parents if piece_count > cfg.top_up_pieces else 0
        self.mean_cost = 0.0
        self.origin_reason = ""
        #: With ``config.origin_window``: the window and each origin request's token.
        self.origin_window: OriginWindow | None = None
        self.origin_tokens: dict[int, int] = {}

    # ------------------------------------------------------------------- views --

    @property
    def done(self) -> bool:
        return self.state is DONE

    @property
    def in_flight(self) -> int:
        return len(self.picker._requests)

    # ------------------------------------------------------------------ events --

    def add_parents(self, offers: Iterable[tuple[str, Any, int, int]], now: float) -> list:
        """Parents from the scheduler, as (peer ID, pieces held or None, tx, max_tx).
        Known and dropped parents are ignored; every new one is followed."""
        actions: list = []
        if self.state is not P2P:
            return actions
        picker = self.picker
        for parent_id, bitmap, tx, max_tx in offers:
            if parent_id in self.parents or parent_id in self.bad:
                continue
            self.parents[parent_id] = now
            picker.parent_added(parent_id, bitmap, tx=tx, max_tx=max_tx, now=now)
            actions.append(Follow(parent_id))
        self._pump(now, actions)
        return actions

    def parent_has(self, parent_id: str, piece: int, now: float) -> bool:
        """A followed parent announced ``piece``. True if the download lacks it (the
        driver may then :meth:`pump`). Hot path: no actions, no allocation."""
        if self.state is not P2P:
            return False  # (its parents, if any, were the old picker's)
        if self.news_timed:
            if parent_id not in self.parents:
                return False
            self.parents[parent_id] = now
        # In P2P the picker's parents are exactly self.parents: one lookup, not two.
        return self.picker.parent_has_if_known(parent_id, piece, now)

    def parent_receiving(self, parent_id: str, piece: int, now: float) -> bool:
        """Cut-through: a followed parent started receiving ``piece`` and will stream it
        as it arrives. True if the download lacks it (the driver may then :meth:`pump`).
        Ignored unless ``config.cut_through``."""
        if not self.config.cut_through or parent_id not in self.parents:
            return False
        if self.news_timed:
            self.parents[parent_id] = now
        return self.picker.parent_receiving(parent_id, piece, now)

    def parent_lost_piece(self, parent_id: str, piece: int, now: float) -> list:
        """Cut-through: a parent that announced ``piece`` while receiving it stopped
        receiving it without the whole piece. A request for it there is cancelled and
        the piece asked again, elsewhere if another parent holds it; not a failure of the
        parent (it served what it had)."""
        actions: list = []
        if parent_id not in self.parents:
            return actions
        if self.picker.parent_lost_piece(parent_id, piece):
            actions.append(Cancel(piece, parent_id))
        self._pump(now, actions)
        return actions

    def parent_load(self, parent_id: str, tx: int, max_tx: int) -> None:
        """A parent's live load (bits/s) changed."""
        if parent_id in self.parents:
            self.picker.parent_load(parent_id, tx, max_tx)

    def pump(self, now: float) -> list:
        """Start what can start now (after news, or when a timer fired)."""
        actions: list = []
        picker = self.picker
        if self.state is P2P and picker.nothing_to_start(now):
            # _pump with next_requests' empty answer already had (most pumps of a swarm
            # peer: a neighbour's news it cannot act on yet): what is left of _pump.
            self._want_more(now, actions)
            return actions
        self._pump(now, actions)
        return actions

    def piece_done(self, piece: int, parent: str | None, cost: float, now: float) -> list:
        """``piece`` arrived verified from ``parent`` after ``cost`` seconds."""
        picker = self.picker
        actions: list = [Cancel(*c) for c in picker.piece_done(piece, parent, cost, now)]
        self.last_progress = now
        window = self.origin_window
        if window is not None and parent == self.origin:
            token = self.origin_tokens.pop(piece, 0)
            picker.max_in_flight = window.done(token, 1, cost)
        if self.news_timed and parent in self.parents:
            self.parents[parent] = now
        if cost > 0:
            mean = self.mean_cost
            self.mean_cost = cost if mean == 0 else mean + COST_EWMA * (cost - mean)
            factor = self.config.timeout_factor
            if factor > 0 and self.state is P2P:
                picker.piece_timeout = max(self.config.piece_timeout, factor * self.mean_cost)
        if picker.done:
            if self.state is not DONE:
                self.state = DONE
                actions.append(Finished())
            return actions
        self._pump(now, actions)
        return actions

    def piece_failed(
        self, piece: int, parent: str, kind: str, now: float, reason: str = ""
    ) -> list:
        """An outstanding request failed; ``kind`` is one of :data:`KINDS`."""
        if kind not in KINDS:
            raise ValueError(f"failure kind {kind!r} is unknown: use one of {KINDS}")
        actions: list = []
        picker = self.picker
        if kind == BUSY:
            picker.piece_busy(piece, parent, now, self.config.busy_backoff)
            self._pump(now, actions)
            return actions
        if (piece, parent) not in picker._requests:
            return actions  # cancelled or timed out already: counted then
        actions.append(ReportFailed(piece, parent, kind in (CONNECTION, NOT_FOUND), reason))
        if kind in (CORRUPT, CONNECTION) or parent == self.origin:
            picker.piece_failed(piece, parent, now)
            if parent != self.origin:
                self._drop_parent(parent, now, reason or kind, actions)
        elif picker.piece_failed(piece, parent, now).report_parent:
            self._drop_parent(
                parent, now, reason or f"{self.config.failure_limit} failures", actions
            )
        self._pump(now, actions)
        return actions

    def parent_gone(self, parent_id: str, now: float, reason: str = "parent gone") -> list:
        """A parent left, or its connection or announcement stream ended."""
        actions: list = []
        if parent_id in self.parents:
            self._drop_parent(parent_id, now, reason, actions)
            self._pump(now, actions)
        return actions

    def back_to_source(self, reason: str, now: float) -> list:
        """The scheduler (or the driver: no scheduler, scheduling failed) sends the
        download to the origin for what it lacks."""
        actions: list = []
        if self.state is P2P:
            self._to_origin(reason, now, actions)
        return actions

    def next_timer(self, now: float) -> float:
        """When :meth:`tick` must run next (absolute time; inf: no timer needed)."""
        if self.state is DONE:
            return math.inf
        picker = self.picker
        cfg = self.config
        at = picker.wakeup(now)
        requests = picker._requests
        if requests:
            oldest = next(iter(requests.values()))
            due = oldest + picker.piece_timeout
            if due < at:
                at = due
        if self.state is not P2P:
            return at
        if not requests:
            due = self.last_progress + cfg.stall_timeout
            if due < at:
                at = due
        if (not requests and (cfg.reschedule_when == "idle" or not self.parents)) or (
            requests and self._wants_parents(len(requests))
        ):
            due = self.last_reschedule + cfg.reschedule_interval
            if due < at:
                at = max(due, now)
        if self.parents and cfg.parent_idle_timeout < math.inf:
            due = min(self.parents.values()) + cfg.parent_idle_timeout
            if due < at:
                at = due
        return at

    def tick(self, now: float) -> list:
        """Timers: requests that timed out, parents whose stream ended, the stall and
        reschedule rules; then whatever can start."""
        actions: list = []
        if self.state is DONE:
            return actions
        picker = self.picker
        for failure in picker.check_timeouts(now):
            actions.append(Cancel(failure.piece, failure.parent))
            if failure.parent == self.origin:
                continue
            actions.append(ReportFailed(failure.piece, failure.parent, True, "timed out"))
            if failure.report_parent:
                self._drop_parent(failure.parent, now, "piece timeouts", actions)
        limit = self.config.parent_idle_timeout
        if self.state is P2P and limit < math.inf:
            busy = {parent for _piece, parent in picker._requests}
            for parent_id, seen in list(self.parents.items()):
                if now >= seen + limit and parent_id not in busy:
                    self._drop_parent(parent_id, now, "no news from the parent", actions)
        self._pump(now, actions)
        return actions

    # --------------------------------------------------------------- internals --

    def _pump(self, now: float, actions: list) -> None:
        state = self.state
        if state is DONE or (state is ORIGIN and self.origin is None):
            return
        for piece, parent in self.picker.next_requests(now):
            actions.append(Fetch(piece, parent))
            if state is ORIGIN and self.origin_window is not None:
                self.origin_tokens[piece] = self.origin_window.started()
        if state is P2P:
            self._want_more(now, actions)

    def _want_more(self, now: float, actions: list) -> None:
        """After a pump in P2P: idle, or busy but short of parents, asks for more."""
        requests = len(self.picker._requests)
        if not requests:
            self._idle(now, actions)
        elif self._wants_parents(requests) and self._ask_due(now):
            few = len(self.parents) < self.min_parents
            self._ask(now, (), "too few parents" if few else "parents busy", actions)

    def _wants_parents(self, requests: int) -> bool:
        """Busy, but short of parents: fewer than ``min_parents`` (0 for a download of
        few pieces: ``min_parents_pieces``), or at least ``top_up_parents`` of them and
        fewer than ``max_in_flight`` requests going (``top_up_pieces``: not for a download
        of few pieces)."""
        parents = len(self.parents)
        if parents < self.min_parents:
            return True
        top_up = self.top_up_parents
        return bool(top_up) and parents >= top_up and requests < self.config.max_in_flight

    def _idle(self, now: float, actions: list) -> None:
        """Nothing in flight: fall back after the stall timeout, else ask for parents
        (whenever idle for d7y; once every parent is gone for dragonfly)."""
        cfg = self.config
        # Deadlines compare as ``now >= start + limit``, the sum next_timer returns, so
        # a timer firing at its deadline always sees it passed (no float-rounding loop).
        if now >= self.last_progress + cfg.stall_timeout:
            self._to_origin(f"stalled: no piece for {cfg.stall_timeout:g} s", now, actions)
            return
        if cfg.reschedule_when == "orphaned" and self.parents:
            return
        if self._ask_due(now):
            self._ask(now, (), "waiting for pieces", actions)

    def _ask_due(self, now: float) -> bool:
        """A Reschedule without bad parents is due: ``reschedule_interval`` since the
        last one, and never twice at one instant (an event may ask, then go idle)."""
        last = self.last_reschedule
        return now != last and now >= last + self.config.reschedule_interval

    def _ask(self, now: float, bad: tuple[str, ...], reason: str, actions: list) -> None:
        cfg = self.config
        if cfg.max_reschedules and self.reschedules >= cfg.max_reschedules:
            self._to_origin(f"{self.reschedules} reschedules did not finish it", now, actions)
            return
        self.reschedules += 1
        self.last_reschedule = now
        actions.append(AskParents(bad, reason))

    def _drop_parent(self, parent_id: str, now: float, reason: str, actions: list) -> None:
        if self.parents.pop(parent_id, None) is None:
            return
        self.bad.add(parent_id)
        for key in self.picker.parent_removed(parent_id):
            actions.append(Cancel(*key))
        actions.append(Unfollow(parent_id))
        if self.state is not P2P:
            return
        if self.config.reschedule_when == "idle":
            self._ask(now, (parent_id,), reason[:200], actions)
        elif not self.parents:
            self._ask(now, tuple(self.bad), "every parent's stream ended", actions)

    def _to_origin(self, reason: str, now: float, actions: list) -> None:
        self.state = ORIGIN
        self.origin_reason = reason
        picker = self.picker
        for key in picker.in_flight:
            actions.append(Cancel(*key))
        for parent_id in self.parents:
            actions.append(Unfollow(parent_id))
        self.parents.clear()
        actions.append(GoToOrigin(reason))
        if self.origin is None:
            return
        # A fresh picker over what is held, with the origin as the only parent: origin
        # fetches are plain ranged GETs with no piece timeout and no endgame.
        window = None
        if self.config.origin_window:
            window = self.origin_window = OriginWindow(self.config.origin_in_flight)
        self.picker = PiecePicker(
            self.size,
            self.rng,
            have=picker.have_bitmap(),
            max_in_flight=window.limit if window is not None else self.config.origin_in_flight,
            piece_timeout=1e12,
            endgame=False,
            streaming=self.streaming,
            bitmaps=self._bitmaps,
        )
        self.held = self.picker.held  # the view follows the picker that now fills it
        full = self._bitmaps.Bitmap(self.size)
        for i in range(self.size):
            full.set(i)
        self.picker.parent_added(self.origin, full, now=now)
        self._pump(now, actions)  # the first origin requests (and their window tokens)


__all__ = [
    "BUSY",
    "CONNECTION",
    "CORRUPT",
    "DONE",
    "DOWNLOAD_POLICIES",
    "DOWNLOAD_POLICY_DEFAULTS",
    "ERROR",
    "KINDS",
    "NOT_FOUND",
    "ORIGIN",
    "P2P",
    "AskParents",
    "Cancel",
    "Download",
    "DownloadConfig",
    "Fetch",
    "Finished",
    "Follow",
    "GoToOrigin",
    "ReportFailed",
    "Unfollow",
]
