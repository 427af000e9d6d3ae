"""The peer-side piece picker: which piece to request next, and from which parent.

Sans-IO, one object per download, driven by the peer daemon's event loop or by the
simulator. The caller tells it what happens (parents come and go, announce pieces and
load; requests finish, fail or time out) and asks :meth:`PiecePicker.next_requests` what
to start; every answer is a plain value the caller acts on.

Policy (DESIGN.md section 4, "Peer side"):

- At most ``max_in_flight`` (16) requests at once, duplicates included.
- Piece order: rarest first among the pieces some parent holds and we lack (ties broken
  from a random start so peers do not all chase the same piece). With ``streaming``
  (a consumer reads the output in order: proxy, stdout), the missing pieces in the window
  ``[lowest missing, lowest missing + streaming_window)`` go first, lowest first, then
  rarest first for the remaining slots -- in-order where it matters, rarity elsewhere.
- Parent per piece: weighted random among the parents holding it, weight
  ``max(max_tx - tx, max_tx / 10)`` from the parent's announced load (spare bandwidth,
  with a floor so a busy parent still gets some work). A parent announcing no capacity
  (max_tx 0) weighs 0, so it gets pieces only when no holder has a known capacity; then
  the choice is uniform.
- Endgame: once the missing pieces fit in the in-flight capacity, free slots request
  in-flight pieces again from a second parent; when one copy lands, :meth:`piece_done`
  returns the other request to cancel.
- ``per_parent_limit`` (0: none) caps the requests outstanding at one parent, so a
  download spreads over its parents instead of queueing behind one; a parent that
  answers "busy" (:meth:`piece_busy`) is skipped until its back-off ends, and the piece is
  asked elsewhere at once: busy is not a failure.
- ``order="announced"`` (Dragonfly's client): pieces are dispatched in the order parents
  announced them, each once every parent announced it or ``dispatch_wait`` after the
  first did; :meth:`wakeup` says when a waiting piece becomes due.
- Failures and timeouts: the piece is retried first, elsewhere (the failing parent is
  avoided for that piece while another holder exists); a parent with ``failure_limit`` (3)
  failures in a row is reported once (``PieceFailure.report_parent``) for the caller to
  reschedule, and is not used again until it is removed and re-added.
- Cut-through relaying (opt-in, simulated only so far: ``DownloadConfig.cut_through``):
  a parent may announce a piece it is still receiving (:meth:`parent_receiving`) and
  take the news back if that transfer ends without the piece (:meth:`parent_lost_piece`).
  Such a parent counts as a holder, taken only when no parent holds the piece whole.

Deterministic for a seeded ``rng`` and a given sequence of calls.
"""

from __future__ import annotations

import math
import random
from bisect import insort
from collections import deque
from collections.abc import Iterable
from operator import attrgetter, itemgetter
from types import ModuleType
from typing import Any, NamedTuple


def _randbelow_inlinable(rng: random.Random) -> bool:
    """Whether ``rng.randrange(n)`` is ``random.Random``'s own: one ``getrandbits(k)``
    (k = n.bit_length()) and another while the result is >= n. Then the picker draws
    that way itself, the very same numbers, without randrange's two Python frames (a
    swarm peer makes millions of draws whose value it does not use; see
    :meth:`PiecePicker._skip_draws`). Any other generator is called as it is."""
    cls = type(rng)
    return (
        cls.randrange is random.Random.randrange
        and cls._randbelow is random.Random._randbelow_with_getrandbits  # type: ignore[attr-defined]
    )


class PieceFailure(NamedTuple):
    """A failed or timed-out request. ``report_parent``: this parent just reached the
    failure limit; report it to the scheduler (reschedule with it as a bad parent)."""

    piece: int
    parent: str
    report_parent: bool


class _Parent:
    __slots__ = (
        "able",
        "active",
        "bitmap",
        "busy_until",
        "cost_total",
        "failures",
        "id",
        "max_tx",
        "order",
        "pieces_done",
        "reported",
        "tx",
        "weight",
    )

    def __init__(self, parent_id: str, bitmap: Any, tx: int, max_tx: int, order: int) -> None:
        self.id = parent_id
        self.order = order  # position among the picker's parents (insertion order)
        self.able = False  # in the picker's list of parents able to take a request
        self.bitmap = bitmap
        self.active = 0  # requests outstanding at this parent
        self.busy_until = -math.inf  # answered "busy": not asked again before then
        self.failures = 0
        self.reported = False
        self.pieces_done = 0
        self.cost_total = 0.0
        self.set_load(tx, max_tx)

    def can_take(self, now: float, limit: int) -> bool:
        """Whether this parent may be asked for one more piece now: not reported, below
        ``limit`` outstanding requests, not backing off after a busy answer."""
        return not self.reported and self.active < limit and self.busy_until <= now

    def set_load(self, tx: int, max_tx: int) -> None:
        self.tx = tx
        self.max_tx = max_tx
        self.weight = max(max_tx - tx, max_tx / 10, 0)


_ORDER = attrgetter("order")
_END = itemgetter(0)  # a back-off entry's end time


def _union(parents: list[_Parent]) -> Any:
    """The pieces any of ``parents`` holds (None if there is none)."""
    if not parents:
        return None
    union = parents[0].bitmap.copy()
    for p in parents[1:]:
        union.update(p.bitmap)
    return union


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_load(tx: object, max_tx: object) -> None:
    for name, value in (("tx", tx), ("max_tx", max_tx)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0 (bits/s), got {value!r}")


class PiecePicker:
    """Piece and parent choice for one download of ``piece_count`` pieces."""

    __slots__ = (
        "_able",
        "_able_limit",
        "_announced",
        "_backoff_at",
        "_backoffs",
        "_bitmaps",
        "_by_piece",
        "_clock",
        "_failed_for",
        "_getrandbits",
        "_have",
        "_have_count",
        "_inline_draws",
        "_live",
        "_need",
        "_order",
        "_parents",
        "_partial",
        "_quiet",
        "_rarity",
        "_reach",
        "_reach_exact",
        "_requests",
        "_retry",
        "_retry_set",
        "dispatch_wait",
        "endgame",
        "failure_limit",
        "held",
        "max_in_flight",
        "order",
        "per_parent_limit",
        "piece_timeout",
        "rng",
        "size",
        "streaming",
        "streaming_window",
    )

    def __init__(
        self,
        piece_count: int,
        rng: random.Random,
        *,
        have: Any = None,
        max_in_flight: int = 16,
        streaming: bool = False,
        streaming_window: int = 8,
        piece_timeout: float = 30.0,
        failure_limit: int = 3,
        endgame: bool = True,
        per_parent_limit: int = 0,
        order: str = "rarest",
        dispatch_wait: float = 0.0,
        bitmaps: ModuleType | None = None,
    ) -> None:
        _check_int("piece_count", piece_count, 0)
        if not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, got {rng!r}")
        _check_int("max_in_flight", max_in_flight, 1)
        _check_int("streaming_window", streaming_window, 1)
        _check_int("failure_limit", failure_limit, 1)
        _check_int("per_parent_limit", per_parent_limit, 0)
        if order not in ("rarest", "announced"):
            raise ValueError(f"order must be 'rarest' or 'announced', got {order!r}")
        if not isinstance(dispatch_wait, int | float) or not 0 <= dispatch_wait < math.inf:
            raise ValueError(f"dispatch_wait must be seconds >= 0, got {dispatch_wait!r}")
        if (
            isinstance(piece_timeout, bool)
            or not isinstance(piece_timeout, int | float)
            or not (piece_timeout > 0 and math.isfinite(piece_timeout))
        ):
            raise ValueError(
                f"piece_timeout must be a finite number of seconds > 0, got {piece_timeout!r}"
            )
        if bitmaps is None:
            from d7y.ext.bitmap import backend as bitmaps
        self._bitmaps = bitmaps
        self.size = piece_count
        self.rng = rng
        # rng.randrange drawn by _randbelow itself (_randbelow_inlinable), or called.
        self._inline_draws = _randbelow_inlinable(rng)
        self._getrandbits = rng.getrandbits
        self.max_in_flight = max_in_flight
        self.streaming = bool(streaming)
        self.streaming_window = streaming_window
        self.piece_timeout = float(piece_timeout)
        self.failure_limit = failure_limit
        self.endgame = bool(endgame)
        self.per_parent_limit = per_parent_limit
        self.order = order
        self.dispatch_wait = float(dispatch_wait)
        # order="announced": missing pieces -> when a parent first announced them, in
        # announcement order.
        self._announced: dict[int, float] = {}
        self._have = self._bitmap(have, "have")
        #: The pieces held: the picker's own bitmap, live, for reading only (a driver
        #: telling many downloads about one piece skips those that hold it). Change it
        #: through piece_done.
        self.held = self._have
        self._have_count = self._have.count()
        need = bitmaps.Bitmap(piece_count)
        for i in self._have.iter_clear():
            need.set(i)
        self._need = need  # pieces neither held nor requested
        self._parents: dict[str, _Parent] = {}
        self._rarity = bitmaps.RarityCounter(piece_count)
        self._requests: dict[tuple[int, str], float] = {}  # (piece, parent) -> started at
        self._by_piece: dict[int, list[str]] = {}  # piece -> parents it is requested from
        self._failed_for: dict[int, set[str]] = {}  # piece -> parents that failed it
        # Cut-through (:meth:`parent_receiving`): piece -> the parents that announced it
        # while still receiving it. Their bitmap holds the piece like a whole one; the
        # parent choice prefers whole holders. Empty unless a driver relays cut-through.
        self._partial: dict[int, set[str]] = {}
        # Pieces whose request failed, timed out or lost its parent: retried first, in
        # failure order, so a failure costs one round trip rather than a place in line.
        self._retry: dict[int, None] = {}
        self._retry_set = bitmaps.Bitmap(piece_count)  # the same pieces, as a bitmap
        self._live = 0  # parents not reported
        # The parents able to take a request (:meth:`_Parent.can_take`) at ``_clock``,
        # the latest time a call gave, in the parents' order: kept up to date as
        # requests start and end, parents answer busy, are reported, come and go, and
        # as back-offs end (``_backoffs``, stale entries skipped), instead of a scan of
        # every parent on every call -- a swarm peer has up to 50 parents and is pumped
        # on every piece its neighbours announce.
        self._order = 0  # the next parent's ``order``
        self._able: list[_Parent] = []
        self._able_limit = self._parent_limit()
        self._clock = -math.inf
        # The back-offs as (busy_until, parent), in the order they end; ties in the
        # order they began. Not a heap: a download's back-offs all last busy_backoff,
        # so each new one ends last and is appended, and the first to end is taken
        # from the left, where a heap compared tuples of floats (a few percent of a
        # large swarm run); one that ends sooner than the last is inserted in order.
        self._backoffs: deque[tuple[float, _Parent]] = deque()
        # its first entry's time (inf: empty), kept beside it: _able_kept reads it on
        # every pump, and reaching it in the first tuple costs two more objects
        self._backoff_at = math.inf
        # The pieces some able parent holds, while ``_reach_exact`` (else found again
        # when needed: a parent leaving the list cannot be taken out of a union).
        self._reach: Any = None
        self._reach_exact = True
        # True while no able parent holds a piece of ``_need``: set by a call that found
        # none, cleared when a parent becomes able, an able parent announces a piece or
        # a piece is wanted again. Such a call starts nothing (see next_requests).
        self._quiet = False

    def _bitmap(self, value: Any, what: str) -> Any:
        """A private Bitmap from None, a Bitmap, a BitTorrent bitfield, or piece numbers."""
        cls = self._bitmaps.Bitmap
        if value is None:
            return cls(self.size)
        if isinstance(value, cls):
            if len(value) != self.size:
                raise ValueError(f"{what} bitmap has {len(value)} pieces, the task {self.size}")
            return value.copy()
        if isinstance(value, bytes | bytearray | memoryview):
            return cls.from_bytes(value, self.size)
        if isinstance(value, Iterable) and not isinstance(value, str):
            bm = cls(self.size)
            for i in value:
                bm.set(i)
            return bm
        raise TypeError(
            f"{what} must be None, a Bitmap of this backend, a bitfield (bytes) or piece "
            f"numbers, got {type(value).__name__}"
        )

    # ---------------------------------------------------------------- state view --

    @property
    def done(self) -> bool:
        return self._have_count == self.size

    @property
    def have_count(self) -> int:
        return self._have_count

    @property
    def missing_count(self) -> int:
        return self.size - self._have_count

    def has(self, piece: int) -> bool:
        return self._have.test(piece)

    def have_bitmap(self) -> Any:
        """A copy of the pieces held."""
        return self._have.copy()

    @property
    def in_flight(self) -> tuple[tuple[int, str], ...]:
        """Outstanding requests (piece, parent), oldest first."""
        return tuple(self._requests)

    @property
    def parent_ids(self) -> tuple[str, ...]:
        return tuple(self._parents)

    def parent_failures(self, parent_id: str) -> int:
        """Consecutive failures of a parent (0 after any success)."""
        return self._parent(parent_id).failures

    def is_reported(self, parent_id: str) -> bool:
        return self._parent(parent_id).reported

    def _parent(self, parent_id: str) -> _Parent:
        try:
            return self._parents[parent_id]
        except KeyError:
            raise KeyError(f"parent {parent_id!r} is unknown: parent_added first") from None

    # ------------------------------------------------------------------- parents --

    def parent_added(
        self,
        parent_id: str,
        bitmap: Any = None,
        *,
        tx: int = 0,
        max_tx: int = 0,
        now: float = 0.0,
    ) -> None:
        """A parent to download from, with the pieces it holds and its announced load
        (bits/s). Adding a known parent replaces its bitmap and load, keeping its
        failure record. ``now``: when its pieces were announced (order="announced")."""
        if not isinstance(parent_id, str) or not parent_id:
            raise TypeError(f"parent_id must be a non-empty str, got {parent_id!r}")
        _check_load(tx, max_tx)
        bm = self._bitmap(bitmap, f"parent {parent_id}")
        old = self._parents.get(parent_id)
        if old is not None:
            self._rarity.remove(old.bitmap)
            if self._partial:
                self._forget_partial(parent_id)
            old.bitmap = bm
            old.set_load(tx, max_tx)
            if old.able:  # its pieces in the union are replaced
                self._reach_exact = False
                self._quiet = False
        else:
            state = self._parents[parent_id] = _Parent(parent_id, bm, tx, max_tx, self._order)
            self._order += 1
            self._live += 1
            self._refresh(state)
        self._rarity.add(bm)
        if self.order == "announced":
            announced = self._announced
            for piece in self._have.and_not(bm).iter_set():  # held by it, lacked here
                if piece not in announced:
                    announced[piece] = now

    def parent_removed(self, parent_id: str) -> list[tuple[int, str]]:
        """Forget a parent; returns its outstanding requests, which the caller cancels
        (their pieces become wanted again). Unknown parents are ignored."""
        state = self._parents.pop(parent_id, None)
        if state is None:
            return []
        if state.able:
            self._leave(state)
        if not state.reported:
            self._live -= 1
        self._rarity.remove(state.bitmap)
        if self._partial:
            self._forget_partial(parent_id)
        orphaned = [key for key in self._requests if key[1] == parent_id]
        for piece, parent in orphaned:
            self._drop_request(piece, parent)
        return orphaned

    def parent_has(self, parent_id: str, piece: int, now: float = 0.0) -> bool:
        """A parent announced it now holds ``piece``. Returns whether this download
        lacks the piece, i.e. whether the news may let it start a request.

        A piece the download already holds is not recorded: no decision reads who
        else holds such a piece (only the holders and counts of missing pieces), and
        skipping it keeps this call cheap; a swarm announces every piece to every
        neighbour.
        """
        state = self._parents.get(parent_id)
        if state is None:
            state = self._parent(parent_id)  # raises the KeyError naming it
        return self._news(state, piece, now)

    def parent_has_if_known(self, parent_id: str, piece: int, now: float) -> bool:
        """:meth:`parent_has` for news that may come from a parent this picker does not
        know (any more): False for it, and nothing recorded. The download loop's way in:
        its parents are the picker's, and one dict lookup per announcement is a
        measurable share of a large swarm run."""
        state = self._parents.get(parent_id)
        if state is None:
            return False
        return self._news(state, piece, now)

    def _news(self, state: _Parent, piece: int, now: float) -> bool:
        """:meth:`parent_has` once the parent's record is found."""
        if self._have.test(piece):
            return False
        bitmap = state.bitmap
        if not bitmap.test(piece):
            self._holds(state, piece, now)
        elif self._partial:
            # It was receiving the piece: now it holds it whole.
            partial = self._partial.get(piece)
            if partial is not None:
                partial.discard(state.id)
                if not partial:
                    del self._partial[piece]
        return True

    def _holds(self, state: _Parent, piece: int, now: float) -> None:
        """Record that the parent of ``state`` holds (or is receiving) ``piece``."""
        state.bitmap.set(piece)
        self._rarity.increment(piece)
        if state.able:
            if self._reach_exact:
                self._reach.set(piece)
            self._quiet = False
        if self.order == "announced" and piece not in self._announced:
            self._announced[piece] = now

    def parent_receiving(self, parent_id: str, piece: int, now: float = 0.0) -> bool:
        """Cut-through relaying: a parent announced it started receiving ``piece`` and
        will stream it as it arrives. Until it announces the piece whole
        (:meth:`parent_has`) or takes the news back (:meth:`parent_lost_piece`), it is a
        holder of the piece that the parent choice takes only when no parent holds the
        piece whole. Returns whether this download lacks the piece."""
        state = self._parents.get(parent_id)
        if state is None:
            state = self._parent(parent_id)  # raises the KeyError naming it
        if self._have.test(piece):
            return False
        if not state.bitmap.test(piece):
            self._holds(state, piece, now)
            self._partial.setdefault(piece, set()).add(parent_id)
        return True

    def parent_lost_piece(self, parent_id: str, piece: int) -> bool:
        """A parent that announced ``piece`` while receiving it stopped receiving it
        without the whole piece (its own request was cancelled or failed): it no longer
        holds the piece. An outstanding request for it there is dropped, not counted as
        a failure (the caller cancels it); the piece is wanted again. Returns whether
        such a request was outstanding. News of a piece the parent holds whole, or of a
        parent that never announced it as receiving, changes nothing."""
        partial = self._partial.get(piece)
        if partial is None or parent_id not in partial:
            return False
        partial.discard(parent_id)
        if not partial:
            del self._partial[piece]
        state = self._parents[parent_id]
        state.bitmap.clear(piece)
        self._rarity.decrement(piece)
        if state.able:
            self._reach_exact = False  # the union cannot lose one parent's bit
        return self._drop_request(piece, parent_id)

    def _forget_partial(self, parent_id: str) -> None:
        for piece in [i for i, ids in self._partial.items() if parent_id in ids]:
            ids = self._partial[piece]
            ids.discard(parent_id)
            if not ids:
                del self._partial[piece]

    def parent_load(self, parent_id: str, tx: int, max_tx: int) -> None:
        """A parent's announced load changed (bits/s)."""
        _check_load(tx, max_tx)
        self._parent(parent_id).set_load(tx, max_tx)

    # ----------------------------------------------------------------- requests --

    def next_requests(self, now: float) -> list[tuple[int, str]]:
        """Requests to start now, as (piece, parent); they count as in flight from ``now``."""
        slots = self.max_in_flight - len(self._requests)
        if slots <= 0 or self._have_count == self.size:
            return []
        # The parents that may take a request now, in the parents' order; a parent that
        # reaches ``limit`` leaves the list as a request starts (only ``active`` changes
        # within a call). Most calls find the kept list as it is.
        limit = self._parent_limit()
        able = self._able if self._able_kept(now, limit) else self._able_now(now, limit)
        endgame = self.endgame and self.size - self._have_count <= self.max_in_flight
        if not able:
            # Nothing can start: every parent is reported, at its limit or backing off
            # (the retry and rarest-first passes below would find no holder).
            if not endgame and self.order == "rarest":
                return []
        elif self._quiet and not endgame and self.order == "rarest" and not self.streaming:
            # No able parent holds a piece still needed, as the last call found: the
            # passes below would start nothing, the rarest-first one after drawing one
            # random number, which must be drawn all the same (the generator is shared
            # with the rest of the run). A swarm peer is pumped on every piece its
            # neighbours announce, mostly pieces of parents that cannot take a request.
            self._randbelow(self.size)
            return []
        if not self._live:
            return []  # every parent is reported
        started: list[tuple[int, str]] = []
        # Pieces some parent of ``able`` holds (a superset once parents leave ``able``):
        # a piece outside it cannot start, so the retry and endgame loops skip it without
        # looking for holders (a try that fails has no side effect and draws no random
        # number, so skipping it changes nothing).
        retry = self._retry
        # (The union object is not changed in place within a call: a parent leaving
        # ``able`` only marks it stale.)
        reach = self._reach_now() if retry or endgame else None
        # A retry piece is wanted (neither held nor in flight: it leaves the retry list
        # when it starts or arrives), so with none of them in reach the loop would only
        # skip each one.
        if retry and reach is not None and self._retry_set.and_not(reach).and_not(reach).any():
            retry_set = self._retry_set
            for piece in list(retry):
                if slots == 0:
                    break
                if self._have.test(piece) or piece in self._by_piece:
                    del retry[piece]
                    retry_set.clear(piece)
                    continue
                if not reach.test(piece):
                    continue  # nobody usable holds it now; keep it for later
                if not self._try_start(piece, (), now, started, able, limit):
                    continue  # nobody usable holds it now; keep it for later
                del retry[piece]
                retry_set.clear(piece)
                slots -= 1
        if slots > 0:
            if self.order == "announced":
                slots = self._start_announced(now, slots, started, able, limit)
            else:
                slots = self._start_rarest(now, slots, started, able, limit)
        if slots > 0 and endgame:
            for piece, holders in list(self._by_piece.items()):
                if len(holders) != 1 or reach is None or not reach.test(piece):
                    continue
                if not self._try_start(piece, holders, now, started, able, limit):
                    continue
                slots -= 1
                if slots == 0:
                    break
        return started

    def nothing_to_start(self, now: float) -> bool:
        """True if :meth:`next_requests` (``now``) would start nothing without looking at
        a piece: no free slot, no parent able to take a request, or (the "quiet" state)
        no able parent holding a needed piece -- and then this call did what that call
        does (its one random draw in the quiet state), so the caller need not make it.
        False: call next_requests. A swarm peer is pumped on every piece its neighbours
        announce, and most such pumps start nothing."""
        if self.max_in_flight - len(self._requests) <= 0 or self._have_count == self.size:
            return True
        if (
            self.order != "rarest"
            or (self.endgame and self.size - self._have_count <= self.max_in_flight)
            or not self._able_kept(now, self._parent_limit())
        ):
            return False  # next_requests' own path: endgame, rebuild, back-offs ending
        if not self._able:
            return True
        if not self._quiet or self.streaming:
            return False
        self._randbelow(self.size)  # next_requests' quiet path: its one draw
        return True

    def _randbelow(self, n: int) -> int:
        """``rng.randrange(n)``. With ``random.Random``'s own (_randbelow_inlinable)
        drawn here as it draws it, the very same numbers in one Python frame instead of
        randrange's two (a swarm peer makes millions of draws); else by the generator."""
        if self._inline_draws:
            bits = n.bit_length()
            getrandbits = self._getrandbits
            r = getrandbits(bits)
            while r >= n:
                r = getrandbits(bits)
            return r
        return self.rng.randrange(n)

    def _start_rarest(
        self, now: float, slots: int, started: list, able: list[_Parent], limit: int
    ) -> int:
        # Only pieces some parent able to take a request now holds: with per-parent
        # limits and busy parents, most pieces may be out of reach, and a download is
        # pumped on every piece its parents announce.
        reachable = self._reach_now()  # exact: ``able`` as it is now
        if reachable is None:
            return slots
        need = self._need
        # x.and_not(y) is y & ~x: (reachable - need) taken from reachable = the overlap
        candidates = need.and_not(reachable).and_not(reachable)
        if not candidates.any():
            self._quiet = True  # no able parent holds a needed piece
        while slots > 0:
            if not able and not self.streaming:
                # No parent can take a request any more: every remaining candidate would
                # be drawn, tried and fail, then one last draw finds none. Only the
                # random numbers are left to draw -- the same ones, as the rng's later
                # users (other pieces, other downloads) must see the same sequence.
                # (Every candidate has a nonzero count: some parent holds it.)
                self._skip_draws(candidates.count() + 1)
                break
            piece = self._choose_piece(candidates)
            if piece < 0:
                # Every candidate was tried: each started or no able parent holds it.
                self._quiet = True
                break
            candidates.clear(piece)
            if self._try_start(piece, (), now, started, able, limit):
                slots -= 1
        return slots

    def _start_announced(
        self, now: float, slots: int, started: list, able: list[_Parent], limit: int
    ) -> int:
        """Dragonfly's dispatch: announcement order; a piece waits until every parent
        announced it or ``dispatch_wait`` passed since the first did."""
        need = self._need
        wait = self.dispatch_wait
        live = [p for p in self._parents.values() if not p.reported]
        for piece, first in list(self._announced.items()):
            if slots == 0:
                break
            if not need.test(piece):
                if self._have.test(piece):
                    del self._announced[piece]
                continue
            if now < first + wait and not all(p.bitmap.test(piece) for p in live):
                continue
            if self._try_start(piece, (), now, started, able, limit):
                slots -= 1
        return slots

    def _skip_draws(self, count: int) -> None:
        """Advance the generator as ``count`` calls of ``rng.randrange(self.size)`` would,
        their values unused: the generator is shared with the rest of the run, whose
        later draws must see the very same sequence."""
        randbelow = self._randbelow
        size = self.size
        for _ in range(count):
            randbelow(size)

    def _able_kept(self, now: float, limit: int) -> bool:
        """Whether :meth:`_able_now` would return the kept list as it is (time did not go
        back, the limit is the same, no back-off ends by ``now``); then the list's clock
        moves to ``now``, as it would have. Most calls are these."""
        if now < self._clock or limit != self._able_limit or self._backoff_at <= now:
            return False
        self._clock = now
        return True

    def _able_now(self, now: float, limit: int) -> list[_Parent]:
        """The parents that can take a request at ``now`` (:meth:`_Parent.can_take`), in
        the parents' order: the kept list, with the back-offs ended by ``now`` added."""
        if now < self._clock or limit != self._able_limit:
            self._rebuild(now, limit)  # time went back, or the limit changed
            return self._able
        self._clock = now
        if self._backoff_at <= now:  # (most calls: no back-off ended)
            ends = self._backoffs
            while ends and ends[0][0] <= now:
                busy_until, p = ends.popleft()
                if p.busy_until == busy_until and not p.able and self._parents.get(p.id) is p:
                    self._refresh(p)
            self._first_backoff_changed()
        return self._able

    def _first_backoff_changed(self) -> None:
        """``_backoffs`` changed: keep ``_backoff_at``, its first entry's time, beside it."""
        ends = self._backoffs
        self._backoff_at = ends[0][0] if ends else math.inf

    def _rebuild(self, now: float, limit: int) -> None:
        """Find the able parents, the back-offs and the union again from scratch."""
        self._clock = now
        self._able_limit = limit
        for p in self._able:
            p.able = False
        able = []
        ends = []
        for p in self._parents.values():
            if p.busy_until > now:
                ends.append((p.busy_until, p))
            elif not p.reported and p.active < limit:
                p.able = True
                able.append(p)
        ends.sort(key=_END)  # stable: ties in the parents' order
        self._able = able
        self._backoffs = deque(ends)
        self._first_backoff_changed()
        self._reach_exact = False
        self._quiet = False

    def _refresh(self, p: _Parent) -> None:
        """Put ``p`` in or out of the able list after one of its fields changed."""
        if not p.reported and p.active < self._able_limit and p.busy_until <= self._clock:
            if not p.able:
                p.able = True
                insort(self._able, p, key=_ORDER)
                self._quiet = False
                if self._reach_exact:
                    if self._reach is None:
                        self._reach = p.bitmap.copy()
                    else:
                        self._reach.update(p.bitmap)
        elif p.able:
            self._leave(p)

    def _leave(self, p: _Parent) -> None:
        p.able = False
        self._able.remove(p)
        self._reach_exact = False

    def _reach_now(self) -> Any:
        """The pieces any able parent holds (None if no parent is able)."""
        if not self._reach_exact:
            self._reach = _union(self._able)
            self._reach_exact = True
        return self._reach

    def _parent_limit(self) -> int:
        """Requests one parent may have outstanding (no per-parent limit: any number)."""
        return self.per_parent_limit or self.max_in_flight + 1

    def _try_start(
        self,
        piece: int,
        exclude: Iterable[str],
        now: float,
        started: list,
        able: list[_Parent],
        limit: int,
    ) -> bool:
        """Request ``piece`` from a parent of ``able`` chosen for it (not in ``exclude``);
        False if none can take it now. A parent that reaches ``limit`` leaves ``able``."""
        state = self._choose_parent(piece, exclude, able)
        if state is None:
            return False
        self._start(piece, state.id, now)  # takes it out of ``able`` at ``limit``
        started.append((piece, state.id))
        return True

    def wakeup(self, now: float) -> float:
        """The earliest time after ``now`` at which :meth:`next_requests` may start
        something it cannot start now without any new event: a busy parent's back-off
        ending, or an announced piece's ``dispatch_wait`` running out (inf: none)."""
        limit = self._parent_limit()
        if not self._able_kept(now, limit):
            self._able_now(now, limit)  # ends the back-offs due by now
        ends = self._backoffs  # (after: a rebuild makes a new one)
        at = math.inf
        while ends:
            busy_until, p = ends[0]
            if p.busy_until == busy_until and self._parents.get(p.id) is p:
                at = busy_until  # the first back-off to end (all left end after now)
                break
            ends.popleft()  # stale: the parent's back-off changed, or it left
        self._first_backoff_changed()
        if self.order == "announced" and self.dispatch_wait > 0:
            need = self._need
            for piece, first in self._announced.items():
                due = first + self.dispatch_wait
                if now < due < at and need.test(piece):
                    at = due
                    break  # announcement order: the first waiting piece is due first
        return at

    def _choose_piece(self, candidates: Any) -> int:
        rarity = self._rarity
        if self.streaming:
            low = self._have.first_clear()
            if low >= 0:
                end = low + self.streaming_window
                i = candidates.first_set(low)
                while 0 <= i < end:
                    if rarity.count(i):
                        return i
                    i = candidates.first_set(i + 1) if i + 1 < self.size else -1
        return rarity.rarest(candidates, self._randbelow(self.size))

    def _choose_parent(
        self, piece: int, exclude: Iterable[str], able: list[_Parent]
    ) -> _Parent | None:
        """A holder of ``piece`` among ``able`` (the parents that can take a request now),
        weighted by spare capacity, avoiding parents that failed it while others hold it."""
        failed = self._failed_for.get(piece)
        if exclude:
            holders = [p for p in able if p.id not in exclude and p.bitmap.test(piece)]
        else:
            holders = [p for p in able if p.bitmap.test(piece)]
        if failed:
            fresh = [p for p in holders if p.id not in failed]
            if fresh:
                holders = fresh
            # else every holder failed this piece once already: try them again.
        if self._partial:
            partial = self._partial.get(piece)
            if partial is not None:
                # Cut-through: a parent still receiving the piece can send it no faster
                # than it arrives there; a whole holder is taken first.
                whole = [p for p in holders if p.id not in partial]
                if whole:
                    holders = whole
        if not holders:
            return None
        if len(holders) == 1:
            return holders[0]
        total = 0.0
        for p in holders:
            total += p.weight
        if total <= 0:
            return holders[self._randbelow(len(holders))]
        point = self.rng.random() * total
        for p in holders:
            point -= p.weight
            if point < 0:
                return p
        return holders[-1]  # rounding left a sliver at the top

    def _start(self, piece: int, parent: str, now: float) -> None:
        self._requests[(piece, parent)] = now
        state = self._parents[parent]
        state.active += 1
        if state.able and state.active >= self._able_limit:
            self._leave(state)
        holders = self._by_piece.get(piece)
        if holders is None:
            self._by_piece[piece] = [parent]
            self._need.clear(piece)
        else:
            holders.append(parent)

    def _drop_request(self, piece: int, parent: str) -> bool:
        """Remove one outstanding request; the piece is wanted again if nothing else
        fetches it. False if there was no such request."""
        if self._requests.pop((piece, parent), None) is None:
            return False
        state = self._parents.get(parent)
        if state is not None:
            state.active -= 1
            if not state.able:
                self._refresh(state)
        holders = self._by_piece[piece]
        holders.remove(parent)
        if not holders:
            del self._by_piece[piece]
            if not self._have.test(piece):
                self._need.set(piece)
                self._retry[piece] = None
                self._retry_set.set(piece)
                self._quiet = False
        return True

    # ------------------------------------------------------------------ outcomes --

    def piece_done(
        self, piece: int, parent: str | None, cost: float, now: float
    ) -> list[tuple[int, str]]:
        """``piece`` arrived (verified) from ``parent`` (None: from elsewhere, e.g. the
        origin). Returns the other outstanding requests for it, to cancel (the endgame
        duplicate that lost). A copy arriving after the piece is held changes nothing."""
        if not self._have.test(piece):
            self._have.set(piece)
            self._have_count += 1
            self._need.clear(piece)
            self._failed_for.pop(piece, None)
            self._retry.pop(piece, None)
            self._retry_set.clear(piece)
            self._announced.pop(piece, None)
            if self._partial:
                self._partial.pop(piece, None)
        cancels: list[tuple[int, str]] = []
        holders = self._by_piece.pop(piece, None)
        if holders:
            parents = self._parents
            for other in holders:
                del self._requests[(piece, other)]
                state = parents.get(other)
                if state is not None:
                    state.active -= 1
                    if not state.able:
                        self._refresh(state)
                if other != parent:
                    cancels.append((piece, other))
        if parent is not None:
            state = self._parents.get(parent)
            if state is not None:
                state.failures = 0
                state.pieces_done += 1
                state.cost_total += cost
        return cancels

    def piece_busy(self, piece: int, parent: str, now: float, backoff: float) -> bool:
        """The parent refused the request for now (all its upload slots taken): the
        piece is wanted again at once, from another holder if there is one, and this
        parent is not asked again for ``backoff`` seconds. Not a failure: the parent's
        failure count is untouched. False if the request was not outstanding."""
        if not self._drop_request(piece, parent):
            return False
        state = self._parents.get(parent)
        if state is not None:
            until = state.busy_until = now + backoff
            ends = self._backoffs
            if not ends or ends[-1][0] <= until:
                ends.append((until, state))  # ends last (the usual case, see __init__)
            else:
                insort(ends, (until, state), key=_END)  # after those ending as soon
            self._first_backoff_changed()
            self._refresh(state)
        return True

    def piece_failed(self, piece: int, parent: str, now: float) -> PieceFailure:
        """An outstanding request failed (bad digest, connection error, refusal). The
        piece is wanted again, first, and this parent avoided for it; see
        :class:`PieceFailure`. A report for a request that is not outstanding (it timed
        out or was cancelled already) changes nothing."""
        if not isinstance(parent, str):
            raise TypeError(f"parent must be a str, got {parent!r}")
        self._have.test(piece)  # validates the index
        if not self._drop_request(piece, parent):
            # Not outstanding: already timed out, cancelled or answered. Counting it
            # would charge the parent twice for one request.
            return PieceFailure(piece, parent, False)
        if not self._have.test(piece):
            self._failed_for.setdefault(piece, set()).add(parent)
        report = False
        state = self._parents.get(parent)
        if state is not None:
            state.failures += 1
            if state.failures >= self.failure_limit and not state.reported:
                state.reported = True
                self._live -= 1
                report = True
                if state.able:
                    self._leave(state)
        return PieceFailure(piece, parent, report)

    def check_timeouts(self, now: float) -> list[PieceFailure]:
        """Requests older than ``piece_timeout``, each handled as :meth:`piece_failed`
        (the caller also cancels them)."""
        limit = self.piece_timeout
        requests = self._requests
        # Requests are kept oldest first (as next_timer reads them): none expired if the
        # oldest did not -- most checks, made when a timer fires for another reason.
        if not requests or now < next(iter(requests.values())) + limit:
            return []
        # ``started + limit`` as the caller's timer computes it: a check at that very
        # time expires the request (no rounding gap that would re-arm the same timer).
        expired = [key for key, started in self._requests.items() if now >= started + limit]
        return [self.piece_failed(piece, parent, now) for piece, parent in expired]


__all__ = ["PieceFailure", "PiecePicker"]
