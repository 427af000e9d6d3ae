"""Evaluators: how the scheduler ranks candidate parents and spots bad ones.

One interface, :class:`Evaluator`: ``score(parent, child, total_piece_count) -> float``
(higher is better) and ``is_bad_parent(parent) -> bool``. Three implementations so
research can compare them on the same code path:

- :class:`LoadAwareEvaluator` (the default; DESIGN.md section 4, Dragonfly's current
  "default" evaluator): mostly the parent host's spare upload capacity, then network
  affinity, then host type.
- :class:`BaseEvaluator`: Dragonfly's older base evaluator (finished pieces, upload
  success ratio, free upload slots, host type, IDC, location).
- :class:`RandomEvaluator`: a uniform random score from an injected ``random.Random``.

Weights are class attributes read on every call, so a test or the simulator can change
one (``LoadAwareEvaluator.IDC_WEIGHT = 0.5``, or on an instance) and see different
rankings: that is how the simulator proves it runs this code.

Rules where DESIGN.md is silent (Dragonfly's behaviour in each case):

- An empty IDC or location on either side scores 0: "unknown" is no evidence of
  closeness, so two hosts that both left the field blank do not look co-located.
- Location elements are compared case-insensitively, like IDCs.
- Host type (Dragonfly's rule): a seed peer that has received its task or is running
  from a parent (RECEIVED_NORMAL, RUNNING) scores 1, so the first download of a task
  is steered to the seed; any other seed peer -- back-to-source (fetching from the
  origin), finished, failed -- scores 0, and a normal peer 0.5, so later downloads
  prefer normal peers and spare the seeds.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

from d7y.core.states import PeerState

if TYPE_CHECKING:
    from d7y.core.scheduling.resource import Host, Peer

#: Affinity compares at most this many leading location elements ("a|b|c|d|e").
MAX_LOCATION_ELEMENTS = 5
#: Piece length behind the load-aware concurrency score (Dragonfly's empirical 16 MiB).
CONCURRENCY_PIECE_LENGTH = 16 * 1024 * 1024
#: Window, in seconds, over which queued upload bytes are weighed against bandwidth.
BANDWIDTH_DURATION_WINDOW = 60.0
_CONCURRENCY_BITS = CONCURRENCY_PIECE_LENGTH * 8

# States compared by identity on the hot path: an Enum's __hash__ is Python code, so
# set membership would cost more than the whole test.
_RUNNING = PeerState.RUNNING
_BTS = PeerState.BACK_TO_SOURCE
_SUCCEEDED = PeerState.SUCCEEDED
_RECEIVED_NORMAL = PeerState.RECEIVED_NORMAL


def idc_affinity(parent: Host, child: Host) -> float:
    """1 if both IDCs are set and equal ignoring case, else 0."""
    a = parent.idc_key
    return 1.0 if a and a == child.idc_key else 0.0


def location_affinity(parent: Host, child: Host, identical_is_full: bool = False) -> float:
    """Equal leading '|'-separated elements (at most 5), divided by 5; 0 if either is empty.

    ``identical_is_full``: score 1 when the two locations are identical whatever their
    length (Dragonfly's base evaluator does so; DESIGN's load-aware formula does not).
    """
    a = parent.location_parts  # casefolded, at most 5 elements (see Host.update)
    b = child.location_parts
    if not a or not b:
        return 0.0
    if a == b:  # every compared element equal
        return 1.0 if identical_is_full else len(a) / MAX_LOCATION_ELEMENTS
    matched = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        matched += 1
    return matched / MAX_LOCATION_ELEMENTS


def host_type_score(parent: Peer) -> float:
    """Seed peer received or running from a parent 1, other seed peer (back-to-source
    included) 0, normal peer 0.5."""
    if parent.host.is_seed:
        state = parent.fsm.state
        return 1.0 if state is _RUNNING or state is _RECEIVED_NORMAL else 0.0
    return 0.5


class Evaluator:
    """Ranks parents (``score``) and rejects bad ones (``is_bad_parent``).

    ``is_bad_parent`` is shared by all evaluators (it is Dragonfly's, too): a parent in a
    state that cannot serve -- pending, only registered, failed, left -- is bad. Else its
    recent piece costs decide: with fewer than ``MIN_COST_SAMPLES`` (2) it is fine; while
    its cost window is not full, it is bad if its newest cost exceeds ``MEAN_FACTOR`` (20)
    times the mean of the others (the costs are not yet numerous enough to assume a
    normal distribution); once full, if the newest cost exceeds mean + ``SIGMA`` (3) x the
    (population) standard deviation of the others -- the three-sigma rule.
    """

    MIN_COST_SAMPLES = 2
    MEAN_FACTOR = 20.0
    SIGMA = 3.0

    name = "abstract"

    def score(self, parent: Peer, child: Peer, total_piece_count: int) -> float:
        raise NotImplementedError

    def is_bad_parent(self, parent: Peer) -> bool:
        state = parent.fsm.state
        if state is not _RUNNING and state is not _BTS and state is not _SUCCEEDED:
            return True  # pending, only registered, failed or left
        costs = parent.piece_costs
        n = len(costs)
        if n < self.MIN_COST_SAMPLES:
            return False
        last = costs[-1]
        others = n - 1
        mean = (parent.cost_sum - last) / others
        if n < (costs.maxlen or 0):
            return last > mean * self.MEAN_FACTOR
        variance = (parent.cost_sq_sum - last * last) / others - mean * mean
        return last > mean + self.SIGMA * math.sqrt(variance if variance > 0.0 else 0.0)


class LoadAwareEvaluator(Evaluator):
    """DESIGN.md section 4, exactly::

        total        = 0.6*load_quality + 0.2*idc + 0.1*location + 0.1*host_type
        load_quality = 0.5*peak_bw + 0.3*bw_duration + 0.2*concurrency
        peak_bw      = max(0, 1 - tx_bandwidth/max_tx)                 (0 if max_tx is 0)
        bw_duration  = max(0, 1 - upload_content_length*8/max_tx/60)   (1 if nothing
                       queued; 0 if max_tx is 0, as in Dragonfly)
        concurrency  = need = max_tx/(16 MiB*8); 0 if need <= 1; 1 if count == 0 or
                       count <= need; else need/count

    with max_tx the parent host's ``upload_limit_bps`` and count its
    ``concurrent_upload_piece_count``.
    """

    name = "load_aware"

    LOAD_QUALITY_WEIGHT = 0.6
    IDC_WEIGHT = 0.2
    LOCATION_WEIGHT = 0.1
    HOST_TYPE_WEIGHT = 0.1

    PEAK_BANDWIDTH_WEIGHT = 0.5
    BANDWIDTH_DURATION_WEIGHT = 0.3
    CONCURRENCY_WEIGHT = 0.2

    def score(self, parent: Peer, child: Peer, total_piece_count: int) -> float:
        host = parent.host
        child_host = child.host
        # The hot path of every round (about 10 calls): one call per component, the
        # weights read from the instance/class each time so changing them takes effect.
        peak, duration, concurrency = load_scores(host)
        load = (
            self.PEAK_BANDWIDTH_WEIGHT * peak
            + self.BANDWIDTH_DURATION_WEIGHT * duration
            + self.CONCURRENCY_WEIGHT * concurrency
        )
        idc = host.idc_key
        return (
            self.LOAD_QUALITY_WEIGHT * load
            + (self.IDC_WEIGHT if idc and idc == child_host.idc_key else 0.0)
            + self.LOCATION_WEIGHT * location_affinity(host, child_host)
            + self.HOST_TYPE_WEIGHT * host_type_score(parent)
        )

    def load_quality(self, host: Host) -> float:
        peak, duration, concurrency = load_scores(host)
        return (
            self.PEAK_BANDWIDTH_WEIGHT * peak
            + self.BANDWIDTH_DURATION_WEIGHT * duration
            + self.CONCURRENCY_WEIGHT * concurrency
        )


def load_scores(host: Host) -> tuple[float, float, float]:
    """(peak_bw, bw_duration, concurrency) of a parent host, in one call (hot path).

    - peak_bw: share of the upload limit not reserved, max(0, 1 - tx/max_tx);
    - bw_duration: share of a 60 s window the queued upload bytes leave free
      (1 if nothing is queued);
    - concurrency: 1 while the concurrent piece uploads fit the bandwidth counted in
      16 MiB pieces (need = max_tx/(16 MiB*8)), then need/count; 0 if need <= 1.

    All three are 0 when the host has no upload limit (max_tx 0), as in Dragonfly.
    """
    max_tx = host.upload_limit_bps
    if max_tx <= 0:
        return 0.0, 0.0, 0.0
    ratio = host.tx_bandwidth / max_tx
    peak = 1.0 - ratio if ratio < 1.0 else 0.0
    queued = host.upload_content_length
    if queued <= 0:
        duration = 1.0
    else:
        ratio = queued * 8 / max_tx / BANDWIDTH_DURATION_WINDOW
        duration = 1.0 - ratio if ratio < 1.0 else 0.0
    need = max_tx / _CONCURRENCY_BITS
    if need <= 1.0:
        concurrency = 0.0
    else:
        count = host.concurrent_upload_piece_count
        concurrency = 1.0 if count <= need else need / count  # count 0 included
    return peak, duration, concurrency


def peak_bandwidth_score(host: Host) -> float:
    return load_scores(host)[0]


def bandwidth_duration_score(host: Host) -> float:
    return load_scores(host)[1]


def concurrency_score(host: Host) -> float:
    return load_scores(host)[2]


class BaseEvaluator(Evaluator):
    """Dragonfly's older base evaluator (its evaluator_base.go, reproduced):

    total = 0.2*pieces + 0.2*upload_success + 0.15*free_upload + 0.15*host_type
          + 0.15*idc + 0.15*location
    pieces         = parent finished / total pieces when the total is known, else
                     parent finished - child finished (unbounded, as in Dragonfly)
    upload_success = 1 if the host never uploaded (count 0 and failed 0); 0 if more
                     failures than uploads; else (count - failed)/count
    free_upload    = free slots / concurrent upload limit (0 if either is <= 0)
    host_type      = as in the load-aware evaluator
    idc            = as in the load-aware evaluator
    location       = matched leading elements / 5, but 1 for identical locations
    """

    name = "base"

    FINISHED_PIECE_WEIGHT = 0.2
    UPLOAD_SUCCESS_WEIGHT = 0.2
    FREE_UPLOAD_WEIGHT = 0.15
    HOST_TYPE_WEIGHT = 0.15
    IDC_WEIGHT = 0.15
    LOCATION_WEIGHT = 0.15

    def score(self, parent: Peer, child: Peer, total_piece_count: int) -> float:
        host = parent.host
        child_host = child.host
        return (
            self.FINISHED_PIECE_WEIGHT * piece_score(parent, child, total_piece_count)
            + self.UPLOAD_SUCCESS_WEIGHT * upload_success_score(host)
            + self.FREE_UPLOAD_WEIGHT * free_upload_score(host)
            + self.HOST_TYPE_WEIGHT * host_type_score(parent)
            + self.IDC_WEIGHT * idc_affinity(host, child_host)
            + self.LOCATION_WEIGHT * location_affinity(host, child_host, identical_is_full=True)
        )


def piece_score(parent: Peer, child: Peer, total_piece_count: int) -> float:
    if total_piece_count > 0:
        return parent.finished_count / total_piece_count
    return float(parent.finished_count - child.finished_count)


def upload_success_score(host: Host) -> float:
    uploads = host.upload_count
    failed = host.upload_failed_count
    if uploads < failed:
        return 0.0
    if uploads == 0:  # and failed == 0: never scheduled, so try it first
        return 1.0
    return (uploads - failed) / uploads


def free_upload_score(host: Host) -> float:
    limit = host.concurrent_upload_limit
    free = limit - host.concurrent_upload_count
    if limit > 0 and free > 0:
        return free / limit
    return 0.0


class RandomEvaluator(Evaluator):
    """A baseline: every candidate gets ``rng.random()``; bad parents are still rejected."""

    name = "random"

    def __init__(self, rng: random.Random) -> None:
        if not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, got {rng!r}")
        self.rng = rng

    def score(self, parent: Peer, child: Peer, total_piece_count: int) -> float:
        return self.rng.random()


def make_evaluator(name: str, rng: random.Random) -> Evaluator:
    """The evaluator for a config's ``algorithm`` name."""
    if name == "load_aware":
        return LoadAwareEvaluator()
    if name == "base":
        return BaseEvaluator()
    if name == "random":
        return RandomEvaluator(rng)
    raise ValueError(f"unknown evaluator {name!r}: use 'load_aware', 'base' or 'random'")
