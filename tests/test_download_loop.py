"""The core download loop (d7y.core.scheduling.download): one test per rule.

The loop is sans-IO: each test feeds it events with explicit times and checks the
actions it returns, for both policies. dfdaemon (daemons/peer/p2p.py) and the simulator
(sim/swarm.py) only carry these actions out.
"""

from __future__ import annotations

import math
import random

import pytest

from d7y.core.scheduling.download import (
    BUSY,
    CORRUPT,
    ERROR,
    AskParents,
    Cancel,
    Download,
    DownloadConfig,
    Fetch,
    Finished,
    Follow,
    GoToOrigin,
    ReportFailed,
    Unfollow,
)
from tests.conftest import loop_fixture

bitmap_impl = loop_fixture("download")  # both pairs that run: compiled and Python


def make(bitmap_impl, pieces=8, policy="d7y", origin=None, **fields) -> Download:
    return Download(
        pieces,
        random.Random(7),
        DownloadConfig(policy=policy, **fields),
        now=0.0,
        origin=origin,
        bitmaps=bitmap_impl,
    )


def full(bitmap_impl, n):
    bm = bitmap_impl.Bitmap(n)
    for i in range(n):
        bm.set(i)
    return bm


def of(kind, actions):
    return [a for a in actions if type(a) is kind]


# --- configuration ----------------------------------------------------------------------


def test_policy_defaults():
    df = DownloadConfig(policy="dragonfly")
    assert (df.max_in_flight, df.order, df.dispatch_wait, df.piece_timeout) == (
        8,
        "announced",
        0.1,
        360.0,
    )
    assert df.stall_timeout == math.inf and df.reschedule_when == "orphaned"
    assert (df.max_reschedules, df.parent_idle_timeout) == (5, 360.0)
    assert (df.min_parents, df.min_parents_pieces) == (0, 0)
    d7y = DownloadConfig()
    assert d7y.policy == "d7y" and d7y.order == "rarest" and d7y.per_parent_limit >= 1
    assert d7y.timeout_factor > 0 and d7y.reschedule_when == "idle"
    assert DownloadConfig(policy="dragonfly", max_in_flight=3).max_in_flight == 3


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"policy": "libtorrent"}, "download policy 'libtorrent' is unknown"),
        ({"order": "random"}, "order must be"),
        ({"max_in_flight": 0}, "max_in_flight must be >= 1"),
        ({"piece_timeout": 0}, "piece_timeout must be > 0"),
        ({"reschedule_when": "never"}, "reschedule_when must be"),
        ({"busy_backoff": -1}, "busy_backoff must be"),
        ({"min_parents_pieces": -1}, "min_parents_pieces must be >= 0"),
    ],
)
def test_bad_config_names_the_field(fields, message):
    with pytest.raises((ValueError, TypeError), match=message):
        DownloadConfig(**fields)


# --- fetching -----------------------------------------------------------------------------


def test_parents_are_followed_and_asked_one_request_each(bitmap_impl):
    dl = make(bitmap_impl, per_parent_limit=1)
    actions = dl.add_parents(
        [("a", full(bitmap_impl, 8), 0, 0), ("b", full(bitmap_impl, 8), 0, 0)], 0.0
    )
    assert of(Follow, actions) == [Follow("a"), Follow("b")]
    fetches = of(Fetch, actions)
    assert sorted(f.parent for f in fetches) == ["a", "b"]  # one each, not 16 from one
    assert len({f.piece for f in fetches}) == 2


def test_a_piece_done_starts_the_next_and_the_last_finishes(bitmap_impl):
    dl = make(bitmap_impl, pieces=2, per_parent_limit=1)
    (fetch,) = of(Fetch, dl.add_parents([("a", full(bitmap_impl, 2), 0, 0)], 0.0))
    actions = dl.piece_done(fetch.piece, "a", 1.0, 1.0)
    (second,) = of(Fetch, actions)
    assert second.piece != fetch.piece
    assert dl.piece_done(second.piece, "a", 1.0, 2.0) == [Finished()]
    assert dl.done and dl.next_timer(2.0) == math.inf


def test_busy_is_not_a_failure_and_the_piece_goes_elsewhere(bitmap_impl):
    dl = make(bitmap_impl, pieces=1, per_parent_limit=1, busy_backoff=0.5, endgame=False)
    (fetch,) = of(Fetch, dl.add_parents([("a", full(bitmap_impl, 1), 0, 0)], 0.0))
    actions = dl.add_parents([("b", full(bitmap_impl, 1), 0, 0)], 0.0)
    assert of(Fetch, actions) == []  # the only piece is in flight at a
    actions = dl.piece_failed(fetch.piece, fetch.parent, BUSY, 0.1)
    assert of(ReportFailed, actions) == [] and of(AskParents, actions) == []
    other = "b" if fetch.parent == "a" else "a"
    assert of(Fetch, actions) == [Fetch(0, other)]
    # The busy parent is skipped until its back-off ends, then asked again.
    dl.piece_failed(0, other, BUSY, 0.2)
    assert dl.next_timer(0.2) == pytest.approx(0.6)
    assert of(Fetch, dl.tick(0.59)) == []
    assert of(Fetch, dl.tick(0.6)) == [Fetch(0, fetch.parent)]


def test_a_corrupt_piece_drops_the_parent_and_asks_for_new_ones(bitmap_impl):
    dl = make(bitmap_impl, pieces=4, per_parent_limit=2)
    actions = dl.add_parents([("a", full(bitmap_impl, 4), 0, 0)], 0.0)
    first, second = of(Fetch, actions)
    actions = dl.piece_failed(first.piece, "a", CORRUPT, 1.0, "crc mismatch")
    assert ReportFailed(first.piece, "a", False, "crc mismatch") in actions
    assert Cancel(second.piece, "a") in actions  # the parent's other request goes too
    assert Unfollow("a") in actions
    assert AskParents(("a",), "crc mismatch") in actions
    # A dropped parent offered again is ignored.
    assert dl.add_parents([("a", full(bitmap_impl, 4), 0, 0)], 2.0) == [] or "a" not in dl.parents


def test_repeated_errors_drop_the_parent_after_the_failure_limit(bitmap_impl):
    dl = make(bitmap_impl, pieces=8, per_parent_limit=1, failure_limit=2)
    dl.add_parents([("a", full(bitmap_impl, 8), 0, 0)], 0.0)
    for t in (1.0, 2.0):
        (fetch,) = dl.picker.in_flight
        actions = dl.piece_failed(fetch[0], "a", ERROR, t)
    assert Unfollow("a") in actions and of(AskParents, actions)


# --- when to ask for parents -------------------------------------------------------------


def test_d7y_asks_for_more_parents_while_idle_at_most_once_per_interval(bitmap_impl):
    dl = make(bitmap_impl, reschedule_interval=1.0)
    empty = bitmap_impl.Bitmap(8)
    actions = dl.add_parents([("a", empty, 0, 0)], 0.0)
    assert of(AskParents, actions) == [AskParents((), "waiting for pieces")]
    assert of(AskParents, dl.pump(0.5)) == []
    assert dl.next_timer(0.5) == pytest.approx(1.0)
    assert of(AskParents, dl.tick(1.0)) == [AskParents((), "waiting for pieces")]


def test_dragonfly_asks_only_once_every_parent_is_gone(bitmap_impl):
    dl = make(bitmap_impl, policy="dragonfly", dispatch_wait=0.0)
    empty = bitmap_impl.Bitmap(8)
    actions = dl.add_parents([("a", empty, 0, 0), ("b", empty, 0, 0)], 0.0)
    assert of(AskParents, actions) == []  # idle, but it has parents: it waits
    assert of(AskParents, dl.tick(100.0)) == []
    assert of(AskParents, dl.parent_gone("a", 101.0)) == []
    # The last parent's stream ends: reschedule, naming every parent it had.
    (ask,) = of(AskParents, dl.parent_gone("b", 102.0))
    assert set(ask.bad) == {"a", "b"}


def test_dragonfly_gives_up_after_five_reschedules_and_goes_to_the_origin(bitmap_impl):
    dl = make(bitmap_impl, policy="dragonfly", reschedule_interval=0.0)
    t = 0.0
    for i in range(5):
        t += 1.0
        dl.add_parents([(f"p{i}", bitmap_impl.Bitmap(8), 0, 0)], t)
        assert of(AskParents, dl.parent_gone(f"p{i}", t))
    dl.add_parents([("p5", bitmap_impl.Bitmap(8), 0, 0)], t + 1)
    actions = dl.parent_gone("p5", t + 1)
    assert of(AskParents, actions) == []
    assert of(GoToOrigin, actions) == [GoToOrigin("5 reschedules did not finish it")]


def test_dragonfly_parent_stream_ends_after_360_s_without_news(bitmap_impl):
    dl = make(bitmap_impl, policy="dragonfly")
    dl.add_parents([("a", bitmap_impl.Bitmap(8), 0, 0), ("b", bitmap_impl.Bitmap(8), 0, 0)], 0.0)
    dl.parent_has("b", 3, 200.0)  # b announces a piece: its stream lives on
    assert dl.next_timer(200.0) == pytest.approx(200.1)  # the announced piece's wait
    dl.tick(200.1)  # b's piece goes out
    assert dl.next_timer(201.0) == pytest.approx(360.0)
    actions = dl.tick(360.0)
    assert Unfollow("a") in actions and Unfollow("b") not in actions
    assert of(AskParents, actions) == []  # b still streams


# --- Dragonfly's dispatch -----------------------------------------------------------------


def test_dragonfly_waits_100_ms_for_every_parent_to_announce_a_piece(bitmap_impl):
    dl = make(bitmap_impl, pieces=20, policy="dragonfly")
    dl.add_parents([("a", bitmap_impl.Bitmap(20), 0, 0), ("b", bitmap_impl.Bitmap(20), 0, 0)], 0.0)
    assert dl.parent_has("a", 5, 1.0)
    assert of(Fetch, dl.pump(1.0)) == []  # only a announced it
    assert dl.next_timer(1.0) == pytest.approx(1.1)
    assert of(Fetch, dl.tick(1.1)) == [Fetch(5, "a")]
    # A piece every parent announced goes at once.
    dl.parent_has("a", 6, 2.0)
    dl.parent_has("b", 6, 2.0)
    assert [f.piece for f in of(Fetch, dl.pump(2.0))] == [6]


def test_dragonfly_dispatches_in_announcement_order_at_most_eight(bitmap_impl):
    dl = make(bitmap_impl, pieces=20, policy="dragonfly", dispatch_wait=0.0)
    dl.add_parents([("a", bitmap_impl.Bitmap(20), 0, 0)], 0.0)
    order = [17, 3, 11, 0, 19, 5, 8, 2, 14, 1]
    for piece in order:
        dl.parent_has("a", piece, 1.0)
    assert [f.piece for f in of(Fetch, dl.pump(1.0))] == order[:8]


# --- timeouts and stalls ---------------------------------------------------------------


def test_d7y_request_timeouts_grow_with_the_measured_piece_time(bitmap_impl):
    dl = make(
        bitmap_impl,
        pieces=8,
        per_parent_limit=1,
        piece_timeout=30.0,
        timeout_factor=4.0,
        min_parents=0,
    )
    dl.add_parents([("a", full(bitmap_impl, 8), 0, 0)], 0.0)
    t = 0.0
    for _ in range(3):  # slow link: 20 s a piece
        ((piece, _parent),) = dl.picker.in_flight
        t += 20.0
        dl.piece_done(piece, "a", 20.0, t)
    # A request running 60 s is slow, not failed: 4 x the 20 s mean is 80 s.
    assert of(ReportFailed, dl.tick(t + 60.0)) == []
    assert dl.next_timer(t + 60.0) == pytest.approx(t + 80.0)
    assert of(ReportFailed, dl.tick(t + 80.5))


def test_fixed_timeout_fails_a_slow_request(bitmap_impl):
    dl = make(bitmap_impl, per_parent_limit=1, piece_timeout=30.0, timeout_factor=0.0)
    dl.add_parents([("a", full(bitmap_impl, 8), 0, 0)], 0.0)
    ((piece, _),) = dl.picker.in_flight
    actions = dl.tick(30.5)
    assert Cancel(piece, "a") in actions
    assert ReportFailed(piece, "a", True, "timed out") in actions


def test_d7y_stall_goes_to_the_origin_and_dragonfly_never_stalls(bitmap_impl):
    dl = make(bitmap_impl, stall_timeout=120.0)
    dl.add_parents([("a", bitmap_impl.Bitmap(8), 0, 0)], 0.0)
    assert of(GoToOrigin, dl.tick(119.0)) == []
    assert of(GoToOrigin, dl.tick(120.0)) == [GoToOrigin("stalled: no piece for 120 s")]
    df = make(bitmap_impl, policy="dragonfly")
    df.add_parents([("a", bitmap_impl.Bitmap(8), 0, 0)], 0.0)
    assert of(GoToOrigin, df.tick(100_000.0)) == []


def test_going_to_the_origin_fetches_what_is_missing_from_it(bitmap_impl):
    dl = make(bitmap_impl, pieces=4, origin="origin", per_parent_limit=1, origin_window=False)
    (fetch,) = of(Fetch, dl.add_parents([("a", full(bitmap_impl, 4), 0, 0)], 0.0))
    dl.piece_done(fetch.piece, "a", 1.0, 1.0)
    actions = dl.back_to_source("scheduler", 2.0)
    assert Unfollow("a") in actions and GoToOrigin("scheduler") in actions
    origin_fetches = of(Fetch, actions)
    assert {f.parent for f in origin_fetches} == {"origin"}
    assert sorted(f.piece for f in origin_fetches) == sorted(set(range(4)) - {fetch.piece})
    # Download.held is the live view of what is held, from the origin too.
    other = origin_fetches[0].piece
    dl.piece_done(other, "origin", 1.0, 3.0)
    assert dl.held.test(fetch.piece) and dl.held.test(other)


def test_d7y_origin_window_starts_with_one_range_and_opens_while_it_pays(bitmap_impl):
    """d7y: the origin path keeps one range in flight, then two once a range landed;
    the second limit's ranges (sent under it) are measured: at the same cost per range
    (a distant origin: the round trip dominates) two in flight is twice the rate, so a
    third is tried; when the cost per range grows in step (a slow origin shared by the
    ranges), the step back to the last good limit is final."""
    dl = make(bitmap_impl, pieces=16, origin="origin")
    first = of(Fetch, dl.back_to_source("scheduler", 0.0))
    assert len(first) == 1 and first[0].parent == "origin"
    # One range at limit 1 lands: the window opens to 2 (one more range starts).
    second = of(Fetch, dl.piece_done(first[0].piece, "origin", 1.0, 1.0))
    assert len(second) == 2 and dl.in_flight == 2
    # Both ranges sent under limit 2 land in 1 s each: 2 x the rate -> limit 3.
    more = of(Fetch, dl.piece_done(second[0].piece, "origin", 1.0, 2.0))
    assert dl.origin_window.limit == 2 and len(more) == 1  # one sample of two so far
    more += of(Fetch, dl.piece_done(second[1].piece, "origin", 1.0, 2.0))
    assert dl.origin_window.limit == 3 and dl.in_flight == 3 and len(more) == 3
    # Only ranges sent under limit 3 count for it: the first one (sent under 2) does
    # not; the three after it take 3 s each (the origin is shared): no gain -> 2, for
    # good.
    dl.piece_done(more[0].piece, "origin", 3.0, 5.0)
    later = of(Fetch, dl.pump(5.0))
    in_flight = [f for f, _parent in dl.picker.in_flight]
    assert dl.origin_window.limit == 3 and len(in_flight) == 3
    for piece in in_flight:
        dl.piece_done(piece, "origin", 3.0, 8.0)
    assert dl.origin_window.limit == 2 and dl.origin_window.settled
    assert dl.in_flight == 2 and later == []


@pytest.mark.parametrize(
    ("parents", "max_in_flight", "top_up", "asks"),
    [
        (4, 16, 4, True),  # four busy parents, 4 of 16 requests going: ask
        (3, 16, 4, False),  # fewer: min_parents and the idle rule decide
        (4, 4, 4, False),  # every request slot used: enough parents
        (4, 16, 0, False),  # the rule off
    ],
)
def test_d7y_asks_for_more_parents_when_its_parents_cannot_fill_the_window(
    bitmap_impl, parents, max_in_flight, top_up, asks
):
    dl = make(
        bitmap_impl,
        pieces=64,
        per_parent_limit=1,
        max_in_flight=max_in_flight,
        top_up_parents=top_up,
        reschedule_interval=1.0,
    )
    offers = [(f"p{i}", full(bitmap_impl, 64), 0, 0) for i in range(parents)]
    actions = dl.add_parents(offers, 0.0)
    assert len(of(Fetch, actions)) == min(parents, max_in_flight)
    expected = [AskParents((), "parents busy")] if asks else []
    assert of(AskParents, actions) == expected
    assert of(AskParents, dl.pump(0.5)) == []  # at most once per interval
    assert of(AskParents, dl.tick(1.0)) == expected
    assert (dl.next_timer(1.0) == pytest.approx(2.0)) is asks


@pytest.mark.parametrize(("pieces", "asks"), [(16, False), (17, True)])
def test_a_download_of_few_pieces_does_not_top_up(bitmap_impl, pieces, asks):
    """top_up_pieces (d7y 16): a 64 MiB task's relay chain asks when idle only."""
    dl = make(bitmap_impl, pieces=pieces, per_parent_limit=1, reschedule_interval=1.0)
    assert dl.config.top_up_pieces == 16
    offers = [(f"p{i}", full(bitmap_impl, pieces), 0, 0) for i in range(4)]
    actions = dl.add_parents(offers, 0.0)
    assert (AskParents((), "parents busy") in actions) is asks


def test_dragonfly_never_tops_up(bitmap_impl):
    assert DownloadConfig(policy="dragonfly").top_up_parents == 0
    assert DownloadConfig(policy="d7y").top_up_parents == 4
    with pytest.raises(ValueError, match="top_up_parents must be >= 0, got -1"):
        DownloadConfig(top_up_parents=-1)


def test_dragonfly_origin_fetches_are_a_fixed_number_at_once(bitmap_impl):
    dl = make(bitmap_impl, pieces=16, policy="dragonfly", origin="origin")
    assert len(of(Fetch, dl.back_to_source("scheduler", 0.0))) == 8
    assert dl.origin_window is None


def test_d7y_asks_for_more_parents_while_it_has_few_even_when_busy(bitmap_impl):
    dl = make(
        bitmap_impl,
        per_parent_limit=1,
        min_parents=2,
        min_parents_pieces=0,
        reschedule_interval=1.0,
    )
    actions = dl.add_parents([("a", full(bitmap_impl, 8), 0, 0)], 0.0)
    assert of(Fetch, actions) and AskParents((), "too few parents") in actions
    assert of(AskParents, dl.pump(0.5)) == []  # at most once per interval
    assert dl.next_timer(0.5) == pytest.approx(1.0)
    assert AskParents((), "too few parents") in dl.tick(1.0)
    dl.add_parents([("b", full(bitmap_impl, 8), 0, 0)], 1.5)
    assert of(AskParents, dl.tick(3.0)) == []  # two parents: enough


@pytest.mark.parametrize(("pieces", "asks"), [(8, False), (16, False), (17, True), (256, True)])
def test_d7y_few_piece_download_asks_for_parents_only_when_idle(bitmap_impl, pieces, asks):
    """min_parents holds above min_parents_pieces (16 here; d7y's default 0: off) only:
    a 64 MiB task (16 pieces) fed by one relay-chain parent does not ask for a second
    while it has a request in flight; a larger one does. Idle, both ask."""
    assert DownloadConfig(policy="d7y").min_parents_pieces == 0
    dl = make(
        bitmap_impl,
        pieces=pieces,
        per_parent_limit=1,
        reschedule_interval=1.0,
        min_parents_pieces=16,
    )
    assert (dl.config.min_parents, dl.config.min_parents_pieces) == (2, 16)
    one = bitmap_impl.Bitmap(pieces)
    one.set(0)
    actions = dl.add_parents([("a", one, 0, 0)], 0.0)
    assert of(Fetch, actions) == [Fetch(0, "a")]
    assert (AskParents((), "too few parents") in actions) is asks
    assert (AskParents((), "too few parents") in dl.tick(1.0)) is asks
    assert (dl.next_timer(1.0) <= 2.0) is asks  # a reschedule timer only when it asks
    # The one piece the parent has landed: idle, every download asks.
    assert AskParents((), "waiting for pieces") in dl.piece_done(0, "a", 1.0, 2.5)
