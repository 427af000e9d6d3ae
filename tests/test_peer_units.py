"""Unit tests of the peer daemon's building blocks (no processes, no network)."""

from __future__ import annotations

import asyncio
import errno
import os

import pytest

from d7y.daemons.config import ConfigError, parse_duration, parse_size
from d7y.daemons.peer.api import parse_download_request
from d7y.daemons.peer.config import PeerConfig, load_peer_config
from d7y.daemons.peer.limits import TokenBucket
from d7y.daemons.peer.storage import NoSpaceError, Storage, TaskRecord

# -- config ---------------------------------------------------------------------------


def test_defaults_follow_dragonfly_ports():
    config = PeerConfig()
    assert (config.upload.port, config.upload.piece_port, config.metrics.port) == (4000, 4005, 4002)
    assert config.download.concurrency == 16
    assert (config.storage.disk_high_watermark, config.storage.disk_low_watermark) == (0.8, 0.6)


@pytest.mark.parametrize(
    ("download", "expected"),
    [
        ({}, True),  # d7y, the default policy, relays cut-through
        ({"policy": "dragonfly"}, False),  # Dragonfly's client relays whole pieces
        ({"cut_through": False}, False),
        ({"policy": "dragonfly", "cut_through": True}, True),
    ],
)
def test_cut_through_follows_the_policy_unless_set(tmp_path, download, expected):
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    config = load_peer_config(path, env={}, overrides={"download": download})
    assert config.download_loop_config().cut_through is expected


def test_yaml_then_env_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("download:\n  concurrency: 4\n  piece_timeout: 2m\nstorage:\n  quota: 1GiB\n")
    env = {"D7Y_DFDAEMON_DOWNLOAD__CONCURRENCY": "8", "UNRELATED": "x"}
    config = load_peer_config(path, env=env, overrides={"upload": {"rate_limit": "10MB"}})
    assert config.download.concurrency == 8  # env beats the file
    assert config.download.piece_timeout == 120.0
    assert config.storage.quota == 1 << 30
    assert config.upload.rate_limit == 10_000_000


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("downlaod: {}\n", "unknown config key 'downlaod' (did you mean 'download'?)"),
        ("download:\n  concurrency: many\n", "config key 'download.concurrency'"),
        ("download:\n  concurrency: 0\n", "'download.concurrency' must be > 0"),
        ("log:\n  level: loud\n", "config key 'log.level': 'loud' is not one of"),
        ("upload:\n  port: 70000\n", "'upload.port' must be a port"),
        (
            "storage:\n  disk_low_watermark: 0.9\n",
            "need 0 < low < high <= 1",
        ),
        ("download: [1, 2]\n", "config section 'download' must be a mapping"),
        ("download:\n  rate_limit: 5 parsecs\n", "'5 parsecs' is not a size"),
        ("{{{\n", "is not valid YAML"),
    ],
)
def test_config_errors_name_the_key(tmp_path, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_peer_config(path, env={})
    assert message in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_peer_config(tmp_path / "nope.yaml", env={})


@pytest.mark.parametrize(
    ("text", "value"), [("4MiB", 4 << 20), ("1GB", 10**9), ("512k", 512 << 10), (7, 7)]
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize(("text", "value"), [("500ms", 0.5), ("2h", 7200), (3, 3.0), ("1.5", 1.5)])
def test_parse_duration(text, value):
    assert parse_duration(text) == value


# -- token bucket ---------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_holds_the_average_rate(monkeypatch):
    clock = FakeClock()
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    bucket = TokenBucket(100.0, 100.0, clock=clock)

    async def run() -> None:
        for _ in range(10):
            await bucket.take(50)

    asyncio.run(run())
    # 500 bytes at 100 B/s with a 100-byte burst: the first 100 free, 400 more take 4 s.
    assert clock.now == pytest.approx(4.0)
    assert all(s > 0 for s in slept)


def test_token_bucket_unlimited_never_sleeps(monkeypatch):
    async def forbidden(_seconds: float) -> None:
        raise AssertionError("an unlimited bucket must not sleep")

    monkeypatch.setattr(asyncio, "sleep", forbidden)
    asyncio.run(TokenBucket(0).take(10**12))


def test_token_bucket_rejects_negative_rate():
    with pytest.raises(ValueError, match="rate must be >= 0"):
        TokenBucket(-1)


@pytest.mark.parametrize("burst", [0, -5])
def test_token_bucket_refuses_a_burst_that_lets_nothing_through(burst):
    with pytest.raises(ValueError, match=f"burst must be > 0 bytes, got {burst}"):
        TokenBucket(100.0, burst)
    assert TokenBucket(0, 0).unlimited  # no rate: the burst does not matter


# -- storage --------------------------------------------------------------------------

TID = "ab" + "c" * 62


@pytest.fixture
def storage(tmp_path):
    s = Storage(tmp_path / "data")
    yield s
    s.close()


def test_metadata_round_trip_and_pieces(storage):
    record = TaskRecord(id=TID, url="http://x/y", content_length=10, piece_length=4)
    storage.meta.put_task(record)
    storage.meta.record_piece(TID, 0, "crc32:1", "origin")
    storage.meta.record_piece(TID, 2, "crc32:3", "peer-a")
    assert storage.meta.get_task(TID) == record
    assert storage.meta.pieces(TID) == {0: ("crc32:1", "origin"), 2: ("crc32:3", "peer-a")}
    storage.meta.forget_pieces(TID, [0])
    assert set(storage.meta.pieces(TID)) == {2}
    storage.delete_task(TID)
    assert storage.meta.get_task(TID) is None
    assert storage.meta.pieces(TID) == {}  # cascaded


def test_metadata_survives_reopen(tmp_path):
    first = Storage(tmp_path / "d")
    first.meta.put_task(TaskRecord(id=TID, url="u", content_length=None, piece_length=4))
    first.close()
    second = Storage(tmp_path / "d")
    try:
        assert second.meta.get_task(TID).content_length is None
    finally:
        second.close()


def test_content_path_rejects_traversal(storage):
    for bad in ["../../etc/passwd", "ab", ".hidden", "a/b/c"]:
        with pytest.raises(ValueError, match="not a valid task id"):
            storage.content_path(bad)


def test_write_read_and_export_by_link_and_copy(storage, tmp_path):
    fd = storage.open_for_write(TID, 8)
    try:
        storage.write_piece(fd, 4, memoryview(b"5678"))
        storage.write_piece(fd, 0, memoryview(b"1234"))
        buf = bytearray(8)
        assert storage.read_into(fd, 0, memoryview(buf)) == 8
        assert bytes(buf) == b"12345678"
    finally:
        os.close(fd)
    out = tmp_path / "out.bin"
    assert storage.export(TID, out) == "link"
    assert out.read_bytes() == b"12345678"
    copy = tmp_path / "copy.bin"
    assert storage.export(TID, copy, prefer_link=False) == "copy"
    assert copy.read_bytes() == b"12345678"
    assert not [p for p in tmp_path.iterdir() if ".d7y-" in p.name]  # no temp files left
    assert storage.read_content(TID, 8) == b"12345678"
    assert storage.read_content(TID, 3) == b"123"
    with pytest.raises(OSError, match="holds 8 bytes, expected 9"):
        storage.read_content(TID, 9)  # the metadata promised more than the file holds


def test_export_to_missing_directory_fails_cleanly(storage, tmp_path):
    fd = storage.open_for_write(TID, 1)
    os.close(fd)
    with pytest.raises(OSError, match="cannot write"):
        storage.export(TID, tmp_path / "no" / "such" / "dir" / "f")


def test_quota_refuses_a_task_that_does_not_fit(tmp_path):
    storage = Storage(tmp_path / "q", quota=8 << 20)
    try:
        os.close(storage.open_for_write("a" * 64, 6 << 20))
        with pytest.raises(NoSpaceError) as info:
            storage.open_for_write("b" * 64, 6 << 20)
        assert info.value.errno == errno.ENOSPC
        assert "storage.quota" in info.value.strerror
    finally:
        storage.close()


def test_quota_accepts_a_task_that_fits_beside_the_stored_ones(tmp_path):
    # 6 MiB stored + 1 MiB new <= 8 MiB: the check adds the new task to what is stored.
    storage = Storage(tmp_path / "q", quota=8 << 20)
    try:
        os.close(storage.open_for_write("a" * 64, 6 << 20))
        os.close(storage.open_for_write("b" * 64, 1 << 20))
        assert storage.content_path("b" * 64).stat().st_size == 1 << 20
    finally:
        storage.close()


# -- local API request validation -------------------------------------------------------


def test_parse_download_request():
    request, output, content = parse_download_request(
        {"url": "http://x/y", "headers": {"A": "b"}, "output": "/tmp/out", "tag": "t"}
    )
    assert request.url == "http://x/y" and request.headers == {"A": "b"}
    assert str(output) == "/tmp/out" and content is False


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "must be a JSON object"),
        ({}, "'url' is required"),
        ({"url": "http://x", "bogus": 1}, "unknown fields ['bogus']"),
        ({"url": 5}, "field 'url' has the wrong type"),
        ({"url": "http://x", "headers": {"a": 1}}, "must map strings to strings"),
        ({"url": "http://x", "output": "relative/path"}, "must be an absolute path"),
        ({"url": "http://x", "output": "/no/such/dir/f"}, "does not exist"),
        ({"url": "http://x", "filtered_query_params": ["a", 1]}, "must be a list of strings"),
        ({"url": "http://x", "piece_length": True}, "'piece_length' must be an integer"),
    ],
)
def test_parse_download_request_errors(body, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_download_request(body)


def test_configuration_doc_is_current():
    from pathlib import Path

    from d7y.daemons.cli import config_docs

    doc = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    assert doc.read_text() == config_docs(), (
        "docs/configuration.md is stale: run `d7y config-docs > docs/configuration.md`"
    )


# -- which failure a failed group of origin workers stands for --------------------------


def test_a_changed_object_is_the_cause_among_the_workers_failures():
    # One worker saw the object change; another failed afterwards because of it (a short
    # body of the new version). The task's failure is the change, so the download can
    # start over once with the new version instead of failing on the consequence.
    from d7y.daemons.peer.task import ContentChangedError, DownloadError, FailureKind
    from d7y.daemons.peer.task_manager import _first_cause

    consequence = DownloadError(FailureKind.ORIGIN, "short body", status=206)
    changed = ContentChangedError("ETag changed", status=200, validator="ETag")
    group = BaseExceptionGroup("workers", [consequence, ExceptionGroup("inner", [changed])])
    assert _first_cause(group) is changed
    assert _first_cause(BaseExceptionGroup("workers", [consequence])) is consequence
    bug = KeyError("bug")
    assert _first_cause(BaseExceptionGroup("workers", [changed, bug])) is bug
