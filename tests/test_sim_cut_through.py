"""Cut-through relaying (``DownloadConfig.cut_through``, simulator only): a parent
announces a piece when it starts receiving it and relays it block by block.

The download loop's side: a "receiving" parent is a holder taken only when no parent
holds the piece whole, and its news can be taken back without counting a failure. The
simulator's side: the shaped 16-host swarm, a chain of whole-piece hops without it
(1.94 x T_min before any overhead), pipelines with it; a relayed transfer whose source
is cancelled never delivers; with the option off nothing changes.
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import pytest

from d7y.core.scheduling.download import Cancel, Download, DownloadConfig, Fetch, ReportFailed
from d7y.sim import scenario as sc
from d7y.sim.runner import run_policy
from d7y.sim.swarm import DONE, Simulation, Transfer
from tests.conftest import loop_fixture

bitmap_impl = loop_fixture("download")  # both pairs that run: compiled and Python


SCENARIOS = Path(__file__).resolve().parents[1] / "sim" / "scenarios"
ON = "d7y:download.cut_through=true"


def make(bitmap_impl, pieces=4, seed=7, **fields) -> Download:
    return Download(
        pieces,
        random.Random(seed),
        DownloadConfig(**fields),
        now=0.0,
        bitmaps=bitmap_impl,
    )


def of(kind, actions):
    return [a for a in actions if type(a) is kind]


# --- the download loop ------------------------------------------------------------------


def test_a_receiving_parent_is_asked_and_its_news_taken_back_is_no_failure(bitmap_impl):
    dl = make(bitmap_impl, cut_through=True)
    assert of(Fetch, dl.add_parents([("a", None, 0, 0)], 0.0)) == []  # a holds nothing
    assert dl.parent_receiving("a", 2, 0.1)
    assert of(Fetch, dl.pump(0.1)) == [Fetch(2, "a")]
    # a's own transfer of piece 2 ended without it: the request goes, a is not blamed
    actions = dl.parent_lost_piece("a", 2, 0.2)
    assert Cancel(2, "a") in actions
    assert of(ReportFailed, actions) == [] and of(Fetch, actions) == []
    assert dl.picker.parent_failures("a") == 0 and dl.in_flight == 0
    assert not dl.picker._parents["a"].bitmap.test(2)
    # news taken back for a piece it holds whole changes nothing
    assert dl.parent_has("a", 3, 0.3)
    assert of(Cancel, dl.parent_lost_piece("a", 3, 0.3)) == []
    assert dl.picker._parents["a"].bitmap.test(3)


@pytest.mark.parametrize("seed", range(8))
def test_a_whole_holder_is_preferred_to_a_receiving_one(bitmap_impl, seed):
    dl = make(bitmap_impl, pieces=1, seed=seed, cut_through=True, endgame=False)
    dl.add_parents([("a", None, 0, 0), ("b", None, 0, 0)], 0.0)
    whole = bitmap_impl.Bitmap(1)
    whole.set(0)
    dl.picker.parent_added("b", whole)  # b holds the piece whole (no request yet: a
    dl.parent_receiving("a", 0, 0.0)  # reported load, so otherwise a uniform choice)
    assert of(Fetch, dl.pump(0.0)) == [Fetch(0, "b")]


def test_receiving_news_is_ignored_when_the_option_is_off(bitmap_impl):
    dl = make(bitmap_impl)
    dl.add_parents([("a", None, 0, 0)], 0.0)
    assert not dl.parent_receiving("a", 1, 0.1)
    assert of(Fetch, dl.pump(0.1)) == []


# --- the simulator ----------------------------------------------------------------------


def run(scenario, label):
    return run_policy(scenario, sc.parse_policy(label))


def test_cut_through_pipelines_the_shaped_16_host_chain():
    # 16 pieces of 4 MiB, every host 4 MiB/s up, 16 peers: whole-piece hops cost at
    # least (P + N - 1) / P = 1.94 x T_min along a chain (1.765 measured: the head,
    # once done, feeds the tail); relayed in blocks, every hop receives at full rate.
    s = sc.load(SCENARIOS / "netns-shaped-16.yaml")
    _sim, off, (bound,) = run(s, "d7y")
    sim, on, _b = run(s, ON)
    assert on.summary["done"] == 16 and on.summary["origin_over_size"] <= 1.05
    assert off.summary["makespan"] / bound.t_min > 1.7
    assert on.summary["makespan"] / bound.t_min < 1.2
    # Blocks: 16 flows per piece transfer, at least one per peer and piece.
    assert sim.net.flows_completed >= 16 * 16 * sim.blocks


def test_a_relay_never_outruns_its_source():
    # With one block per piece a relay may start only once the whole piece has reached
    # its parent: store-and-forward, the chain again (the requests are made early, so
    # it is no slower than without the option).
    s = sc.load(SCENARIOS / "netns-shaped-16.yaml")
    one = dataclasses.replace(s, peer=dataclasses.replace(s.peer, cut_through_blocks=1))
    _sim, r1, (bound,) = run(one, ON)
    _sim, r16, _b = run(s, ON)
    assert r1.summary["makespan"] / bound.t_min > 1.5
    assert r16.summary["makespan"] < r1.summary["makespan"] * 0.75


def test_a_cancelled_parent_transfer_never_delivers_a_relayed_piece():
    # Mid-run, a peer whose transfer of a piece is being relayed to children loses the
    # parent it receives that piece from (that parent leaves). Its transfer is
    # cancelled; every relay of it must be cancelled and never delivered, the children
    # must fetch the piece again, and everyone left must finish.
    s = sc.load(SCENARIOS / "netns-shaped-16.yaml")
    relays: list[Transfer] = []
    sources: list[Transfer] = []
    delivered: list[Transfer] = []

    class Spied(Simulation):
        # an override (not an instance attribute: the compiled Simulation has none),
        # which the compiled build's own calls of _deliver also reach
        def _deliver(self, tr: Transfer) -> None:
            if not tr.cancelled:
                delivered.append(tr)
            super()._deliver(tr)

    sim = Spied(s, sc.parse_policy(ON))

    def probe() -> None:
        for peer in sim.peers.values():
            if peer.is_seed or peer.state == DONE:
                continue
            for tr in peer.inflight.values():
                if tr.feeding and tr.parent is not None and not tr.parent.is_seed:
                    sources.append(tr)
                    relays.extend(tr.feeding)
                    sim.leave(tr.parent)
                    return

    sim.later(6.0, probe)
    sim.run()
    assert sources and relays, "no relayed transfer at 6 s to cut"
    assert len(delivered) > 100, "the spy saw no deliveries"
    (source,) = sources
    assert source.cancelled
    for tr in relays:
        assert tr.cancelled and tr not in delivered
        assert tr.source is None
        child = tr.peer
        assert child.state == DONE  # it got the piece another way
    left = sum(1 for p in sim.peers.values() if not p.is_seed and p.state != DONE)
    assert left == 1  # only the peer that left
    assert sim.ended == sim.expected and not math.isnan(source.peer.done_at)


def test_off_is_the_default_and_changes_nothing():
    # The option's default is off, and an explicit off runs the same model: the same
    # simulated outcome as the plain policy (the label seeds the random streams, so
    # the off label is compared with the recorded figure, not with a run of "d7y").
    assert DownloadConfig().cut_through is False
    assert DownloadConfig(policy="dragonfly").cut_through is False
    s = sc.load(SCENARIOS / "netns-shaped-16.yaml")
    sim, off, (bound,) = run(s, "d7y")
    assert not sim.cut_through
    # the figure docs/simulation.md records for d7y on netns-shaped-16 (seeds 1-3)
    assert off.summary["makespan"] / bound.t_min == pytest.approx(1.765, abs=5e-4)
