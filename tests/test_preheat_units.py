"""The job queues' rate window and Redis list, against a real redis-server; the
preheat argument checks; the task IDs the manager gives preheat tasks (dfget's)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import msgspec
import pytest

from d7y.core import ids
from d7y.daemons.manager import schemas as s
from d7y.daemons.manager.job_queue import QueueUnavailable, RedisJobQueue, SqlJobQueue
from d7y.daemons.manager.jobs import preheat_task_id, redacted_args
from d7y.daemons.manager.validation import explain
from d7y.daemons.peer.task import DownloadRequest
from tests.peer_harness import free_port


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _queues(request, clock):
    if request.param == "sql":
        return SqlJobQueue(sessions=None, clock=clock)  # take/give_back need no database
    redis = request.getfixturevalue("redis_server")
    return RedisJobQueue(redis.address, prefix=f"u{uuid.uuid4().hex[:8]}:", clock=clock)


@pytest.fixture(params=["sql", "redis"])
def queue_and_clock(request):
    clock = Clock(1_000_000.25)
    return _queues(request, clock), clock


def test_job_rate_limit_is_a_window_of_one_second(queue_and_clock):
    queue, clock = queue_and_clock

    async def run() -> None:
        await queue.start()
        try:
            assert await queue.take(1, 5, 2) == (2, 0.75)  # 2 a second: 2 of the 5 now
            granted, retry_after = await queue.take(1, 5, 2)
            assert granted == 0 and retry_after == pytest.approx(0.75)
            assert (await queue.take(2, 5, 2))[0] == 2  # another cluster has its own
            await queue.give_back(1, 1)  # one was not used: it may be taken again
            assert (await queue.take(1, 5, 2))[0] == 1
            clock.now += 1  # the next second
            assert (await queue.take(1, 1, 2))[0] == 1
            assert (await queue.take(1, 5, 2))[0] == 1
        finally:
            await queue.close()

    asyncio.run(run())


def test_redis_queue_hands_out_in_order_and_waits(redis_server):
    queue = RedisJobQueue(redis_server.address, prefix=f"u{uuid.uuid4().hex[:8]}:")

    async def run() -> None:
        await queue.start()
        try:
            await queue.push(7, [1, 2, 3])
            assert await queue.pop(7, 2, timeout=1) == [1, 2]
            assert await queue.pop(7, 5, timeout=1) == [3]
            assert await queue.pop(7, 5, timeout=0) == []
            # A waiting pop is woken by a push (from any manager process).
            waiting = asyncio.ensure_future(queue.pop(7, 5, timeout=20))
            await asyncio.sleep(0)
            await queue.push(7, [9])
            assert await waiting == [9]
        finally:
            await queue.close()

    asyncio.run(run())


def test_redis_that_is_down_is_a_clear_error():
    queue = RedisJobQueue(f"127.0.0.1:{free_port()}")

    async def run() -> None:
        with pytest.raises(Exception, match=r"(?i)connect|refused"):
            await queue.start()
        with pytest.raises(QueueUnavailable, match="cannot be reached"):
            await queue.pop(1, 1, timeout=0)
        await queue.close()

    asyncio.run(run())


def test_preheat_task_ids_are_dfgets():
    """Filtered query parameters as Dragonfly writes them (``&``), tags: the task ID a
    preheat gives a URL is the one dfget computes for it."""
    url = "http://o.example/f.bin?X-Amz-Signature=abc&b=2&Expires=9"
    names = s.split_filtered_query_params("Expires&X-Amz-Signature")
    assert names == ["Expires", "X-Amz-Signature"]
    assert s.split_filtered_query_params("") is None  # the default list
    assert ids.task_id(url, filtered_query_params=names) == ids.task_id(
        "http://o.example/f.bin?b=2", filtered_query_params=names
    )
    assert ids.task_id(url, tag="t") != ids.task_id(url)


@pytest.mark.parametrize(
    "extra",
    [
        {"tag": "t1"},
        {"application": "app-a"},
        {"piece_length": 8 << 20},
        {"tag": "t1", "application": "app-a", "piece_length": 4 << 20},
        {"filtered_query_params": "sig&Expires", "application": "app-b"},
    ],
)
def test_preheat_task_id_is_dfgets_with_tag_application_and_piece_length(extra):
    """The manager's task ID for a preheat is the one dfget's request computes with the
    same --tag / --application / --piece-length / --filtered-query-param, and each of
    them changes it."""
    url = "http://o.example/f.bin?sig=abc&keep=1"
    args = msgspec.convert({"type": "file", "url": url, **extra}, s.PreheatArgs)
    filtered = s.split_filtered_query_params(args.filtered_query_params)
    dfget = DownloadRequest(
        url=url,
        tag=args.tag,
        application=args.application,
        piece_length=args.piece_length,
        filtered_query_params=filtered,
    )
    assert preheat_task_id(url, args, filtered) == dfget.task_id()
    plain = msgspec.convert({"type": "file", "url": url}, s.PreheatArgs)
    assert preheat_task_id(url, args, filtered) != preheat_task_id(url, plain, None)


def test_preheat_task_id_is_dragonflys_formula():
    """sha256(canonical URL + tag + application + piece length + "STANDARD"), pinned by
    hand so a change of the order or the encoding cannot pass unnoticed."""
    url = "http://o.example/f.bin"
    args = msgspec.convert(
        {"type": "file", "url": url, "tag": "t", "application": "a", "piece_length": 4 << 20},
        s.PreheatArgs,
    )
    expected = hashlib.sha256(f"{url}ta{4 << 20}STANDARD".encode()).hexdigest()
    assert preheat_task_id(url, args, None) == expected


@pytest.mark.parametrize(
    ("args", "field", "words"),
    [
        ({"scope": "everyone"}, "args.scope",
         ["single_seed_peer", "all_seed_peers", "all_peers", "everyone"]),
        ({"piece_length": 1 << 20}, "args.piece_length", ["4194304", "1073741824", "1048576"]),
        ({"timeout": 0}, "args.timeout", ["timeout"]),
        ({"timeout": 10**9}, "args.timeout", ["604800"]),
        ({"urls": "http://o/a"}, "args.urls", ["a list"]),
    ],
)  # fmt: skip
def test_preheat_args_out_of_range_name_the_field_and_the_allowed_values(args, field, words):
    raw = msgspec.json.encode({"type": "preheat", "args": {"type": "file", "url": "http://o/f",
                                                           **args}})  # fmt: skip
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(raw, type=s.JobCreate)
    message, named = explain(caught.value, s.JobCreate, raw)
    assert named == field, message
    for word in words:
        assert word in message, message


def test_preheat_args_defaults_and_urls():
    args = msgspec.convert({"type": "file", "url": "http://o/f"}, s.PreheatArgs)
    assert (args.scope, args.timeout, args.piece_length, args.application) == (
        "single_seed_peer", None, None, "")  # fmt: skip
    assert args.all_urls() == ["http://o/f"]
    several = msgspec.convert(
        {"type": "file", "urls": ["http://o/a", "http://o/b", "http://o/a"]}, s.PreheatArgs
    )
    s.check_preheat_args(several)
    assert several.all_urls() == ["http://o/a", "http://o/b"]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"type": "file"}, "url"),
        ({"type": "file", "url": "http://o/f", "urls": ["http://o/g"]}, "url"),
        ({"type": "image", "urls": ["http://r/v2/a/manifests/t"]}, "urls"),
        ({"type": "file", "urls": ["http://o/a", "ftp://o/b"]}, r"urls\[1\]"),
        ({"type": "image", "url": "http://r/v2/a/blobs/sha256:0"}, "url"),
        ({"type": "file", "url": "file:///etc/passwd"}, "url"),
        ({"type": "file", "url": "http://o/f", "headers": {"X": "a\r\nB: c"}}, "headers"),
        ({"type": "file", "url": "http://o/f", "username": "u"}, "username"),
        ({"type": "image", "url": "http://r/v2/a/manifests/t", "platform": "linux"}, "platform"),
    ],
)
def test_preheat_args_checks_name_the_field(args, field):
    value = msgspec.convert(args, s.PreheatArgs)
    with pytest.raises(s.ValidationFailed, match=rf"\$\.args\.{field}"):
        s.check_preheat_args(value)


def test_args_shown_without_credentials():
    shown = redacted_args({"password": "p", "headers": {"authorization": "x", "X-A": "1"}})
    assert shown == {"password": "******", "headers": {"authorization": "******", "X-A": "1"}}
    assert redacted_args({"password": "", "headers": {}})["password"] == ""


def test_a_redis_that_is_not_there_stops_the_start_with_a_clear_message(tmp_path):
    import subprocess
    import sys

    port = free_port()  # nothing listens there
    config = tmp_path / "m.yaml"
    config.write_text(
        f"data_dir: {tmp_path}/d\nserver: {{port: 0}}\nmetrics: {{port: 0}}\n"
        f"redis: {{address: 'redis://:hunter2secret@127.0.0.1:{port}/0'}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "d7y.daemons.cli", "manager", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "cannot use the job queue (redis)" in result.stderr, result.stderr
    assert f"redis://127.0.0.1:{port}/0" in result.stderr and "check redis.address" in result.stderr
    assert "hunter2secret" not in result.stderr  # the password is not echoed
