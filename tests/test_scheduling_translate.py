"""translate.py: protocol messages -> scheduler calls, and results -> the messages a peer
is sent (the wire's 0 / -1 / "" for "unknown" on one side, the core's None on the other).

Each case drives a real Scheduler and checks the message as a peer would decode it."""

from __future__ import annotations

import random

from d7y.core import messages as m
from d7y.core.protocol import HEADER_LENGTH, decode_body, decode_header, encode_frame
from d7y.core.scheduling import (
    MetadataOnly,
    NormalTask,
    ScheduleFailed,
    Scheduler,
    SchedulerConfig,
    SmallTask,
    TaskMeta,
    translate,
)
from d7y.core.scheduling.rounds import parent_info

MiB = 1024 * 1024
LENGTH = 10 * MiB  # 3 pieces of 4 MiB


def make() -> Scheduler:
    """Dragonfly's rules without the registration backoff (a register answers at once)."""
    config = SchedulerConfig(policy="dragonfly", register_backoff_min=0.0, register_backoff_max=0.0)
    return Scheduler(config, rng=random.Random(1))


def announce(s: Scheduler, host: str, **fields) -> None:
    msg = m.AnnounceHost(
        host_id=host, ip="127.0.0.1", hostname=host, port=4000, download_port=4005, **fields
    )
    translate.announce_host(s, msg, 0.0)


def register(s: Scheduler, peer: str, host: str, **fields):
    msg = m.RegisterPeer(peer_id=peer, task_id="t", host_id=host, url="http://o/f", **fields)
    return translate.register_peer(s, msg, 0.0)


def wire(message: m.Message) -> m.Message:
    """The message as the peer decodes it (a message the protocol rejects fails here)."""
    frame = encode_frame(message)
    return decode_body(decode_header(frame), frame[HEADER_LENGTH:])


def origin_peer(s: Scheduler, peer: str, host: str, pieces: int) -> None:
    """A peer that went to the origin and holds its first ``pieces`` pieces."""
    register(s, peer, host, need_back_to_source=True)
    start = m.DownloadStarted(peer_id=peer, task_id="t", back_to_source=True, content_length=LENGTH)
    translate.download_started(s, start, 0.0)
    for number in range(pieces):
        done = m.PieceFinished(
            peer_id=peer, task_id="t", number=number, cost_ns=1000, length=4 * MiB,
            digest=f"crc32:{number}",
        )  # fmt: skip
        translate.piece_finished(s, done, 0.0)


def one_parent(pieces: int) -> Scheduler:
    """Hosts h1 and h2; on h1, peer p1 fetching from the origin, holding ``pieces``."""
    s = make()
    for host in ("h1", "h2"):
        announce(s, host)
    origin_peer(s, "p1", "h1", pieces)
    return s


def test_announce_prefers_the_max_tx_field_and_defaults_the_upload_limit():
    s = make()
    announce(s, "h1", upload_limit_bps=5, max_tx_bandwidth_bps=7, tx_bandwidth_bps=3)
    host = s.host("h1")
    assert host.upload_limit_bps == 7 and host.announced_tx_bandwidth == 3
    # 0 on the wire means "not announced": the scheduler's default for a normal host.
    assert host.concurrent_upload_limit == s.config.peer_concurrent_upload_limit
    announce(s, "h2", upload_limit_bps=5)
    assert s.host("h2").upload_limit_bps == 5


def test_unknown_geometry_goes_on_the_wire_as_minus_one_and_zero():
    s = make()
    announce(s, "h1")
    register(s, "p1", "h1")  # no length, piece_length 0: the core keeps None
    assert s.task("t").piece_length is None
    digests = wire(translate.task_digests(s, "t"))
    assert isinstance(digests, m.TaskDigests)
    assert (digests.content_length, digests.piece_length, digests.piece_count) == (-1, 0, -1)


def test_normal_task_answer_sends_the_parents_bitmap_and_the_digests():
    s = one_parent(pieces=2)
    result = register(s, "p2", "h2")
    assert isinstance(result, NormalTask)
    answer = wire(translate.answer(s, result))
    assert isinstance(answer, m.NormalTaskResponse)
    assert (answer.content_length, answer.piece_length, answer.piece_count) == (
        LENGTH,
        4 * MiB,
        3,
    )
    assert answer.digests == {0: "crc32:0", 1: "crc32:1"}
    (parent,) = answer.candidate_parents
    assert (parent.peer_id, parent.host_id, parent.download_port) == ("p1", "h1", 4005)
    assert parent.bitmap == bytes([0b1100_0000])  # pieces 0 and 1, BitTorrent order
    assert parent.state == m.PeerState.BACK_TO_SOURCE


def test_a_parent_gone_meanwhile_is_sent_running_without_a_bitmap():
    s = one_parent(pieces=1)
    result = register(s, "p2", "h2")
    s.leave_peer("p1", 1.0)
    (parent,) = wire(translate.answer(s, result)).candidate_parents
    assert parent.bitmap == b"" and parent.state == m.PeerState.RUNNING


def test_small_task_is_answered_as_normal_until_its_piece_digest_is_known():
    s = one_parent(pieces=0)
    meta = TaskMeta("t", 100, 4 * MiB, 1)
    result = SmallTask("p2", meta, parent_info(s.peer("p1"), 1.0))
    # No digest of piece 0 yet: the peer could not verify the one-piece shortcut.
    assert isinstance(wire(translate.answer(s, result)), m.NormalTaskResponse)
    done = m.PieceFinished(
        peer_id="p1", task_id="t", number=0, cost_ns=1, length=100, digest="crc32:9"
    )
    translate.piece_finished(s, done, 0.0)
    small = wire(translate.answer(s, result))
    assert isinstance(small, m.SmallTaskResponse)
    assert (small.content_length, small.piece_digest) == (100, "crc32:9")
    assert small.parent.peer_id == "p1" and small.parent.host_id == "h1"


def test_metadata_only_and_failures_have_their_own_answers():
    s = make()
    meta = TaskMeta("t", None, None, None)
    local = wire(translate.answer(s, MetadataOnly("p", meta, "other")))
    assert isinstance(local, m.NeedBackToSource) and "read it locally" in local.reason
    failed = wire(translate.answer(s, ScheduleFailed("p", meta, "x" * 5000)))
    assert isinstance(failed, m.Error) and failed.code == m.ErrorCode.UNAVAILABLE
    assert failed.message == "x" * translate.MAX_TEXT and failed.task_id == "t"


def test_trigger_seed_carries_what_the_origin_needs():
    request = m.RegisterPeer(
        peer_id="p", task_id="t", host_id="h", url="http://o/f?x=1", tag="v1",
        application="app", filtered_query_params=["x"], headers={"Authorization": "a"},
        piece_length=8 * MiB,
    )  # fmt: skip
    trigger = wire(translate.trigger_seed(request))
    assert isinstance(trigger, m.TriggerSeed)
    assert (trigger.url, trigger.tag, trigger.application) == ("http://o/f?x=1", "v1", "app")
    assert trigger.filtered_query_params == ["x"] and trigger.headers == {"Authorization": "a"}
    assert trigger.piece_length == 8 * MiB
