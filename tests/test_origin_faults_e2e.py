"""Origins that change or break under a download, and a data dir that fills, end to end.

A real dfdaemon, dfget as a command and a real HTTP origin (tests/origin_server.py) on
loopback. Each case asserts what the user sees (exit status, one readable sentence) and
that no output ever mixes bytes of two versions of the object (issue 13, defects 4, 6).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest

from d7y.core.ids import task_id
from d7y.core.pieces import MiB
from tests.origin_server import generated_bytes
from tests.peer_harness import PeerProcess

PIECE = 4 * MiB
SIZE = 8 * PIECE
#: The seed of the next version of a generated file after a ``mutate`` (origin_server).
NEXT_VERSION = 1_000_003
RAW_ERRORS = ("ExceptionGroup", "Traceback", "TaskGroup", "database or disk is full")


# One real dfdaemon and origin for the module (tests/conftest.py); each test starts with
# the origin reset.
pytestmark = pytest.mark.usefixtures("clean_origin")


def probes(origin, name: str) -> int:
    return origin.stats(f"/{name}")["ranges"].count("bytes=0-0")


def assert_readable(stderr: bytes) -> str:
    text = stderr.decode()
    assert not any(raw in text for raw in RAW_ERRORS), text
    assert text.startswith("dfget: ") and text.count("\n") == 1, text
    return text


# -- defect 4: a changed object is never stitched into one output --------------------------


@pytest.mark.parametrize(
    ("validators", "named"),
    [({}, "ETag"), ({"etag": False}, "Last-Modified")],
    ids=["etag", "last-modified"],
)
def test_origin_ignoring_if_range_and_changing_every_answer_fails_clearly(
    origin, peer, tmp_path, validators, named
):
    """The dishonest origin of the report: every answer is a 206 of a new version."""
    url = origin.add_file("dishonest.bin", size=SIZE, seed=41)
    origin.set_faults("/dishonest.bin", if_range=False, mutate={"count": -1}, **validators)
    out = tmp_path / "out"
    result = peer.dfget(url, out, "--no-progress")
    assert result.returncode == 4, result.stderr.decode()
    text = assert_readable(result.stderr)
    assert "changed" in text and named in text, text
    assert not out.exists()
    assert peer.http_get(task_id(url))[0] == 404
    # It restarted once, from scratch, with the new version, and then gave up.
    assert probes(origin, "dishonest.bin") == 2


def test_origin_honouring_if_range_and_changing_every_answer_fails_clearly(origin, peer, tmp_path):
    """The honest origin: If-Range no longer matches, so it answers 200, every time."""
    url = origin.add_file("honest.bin", size=SIZE, seed=42)
    origin.set_faults("/honest.bin", mutate={"count": -1})
    out = tmp_path / "out"
    result = peer.dfget(url, out, "--no-progress")
    assert result.returncode == 4, result.stderr.decode()
    text = assert_readable(result.stderr)
    assert "changed" in text and "ETag" in text, text
    assert not out.exists()
    assert probes(origin, "honest.bin") == 2


@pytest.mark.parametrize("honours_if_range", [True, False], ids=["honest", "dishonest"])
def test_object_changed_once_mid_download_restarts_with_the_new_version(
    origin, peer, tmp_path, honours_if_range
):
    """Probe and one piece see version 0, everything after sees version 1: the task
    starts over once and the output is version 1, whole."""
    url = origin.add_file(f"once-{honours_if_range}.bin", size=SIZE, seed=43)
    name = f"/once-{honours_if_range}.bin"
    origin.set_faults(name, if_range=honours_if_range, mutate={"count": 1, "skip": 2})
    out = tmp_path / "out"
    result = peer.dfget(url, out, "--no-progress")
    assert result.returncode == 0, result.stderr.decode() + peer.log()[-3000:]
    assert out.read_bytes() == generated_bytes(SIZE, 43 + NEXT_VERSION)
    assert probes(origin, name.lstrip("/")) == 2
    assert "starting over" in peer.log()


# -- defect 6: a broken body or a full disk is an exit code and a sentence ---------------


def test_short_body_on_every_ranged_answer_is_an_origin_error(origin, peer, tmp_path):
    url = origin.add_file("short-ranged.bin", size=2 * PIECE, seed=44)
    origin.set_faults("/short-ranged.bin", truncate={"missing": 1000, "count": -1, "skip": 1})
    out = tmp_path / "out"
    result = peer.dfget(url, out, "--no-progress")
    assert result.returncode == 4, result.stderr.decode()
    text = assert_readable(result.stderr)
    assert "origin closed the connection after" in text and "bytes" in text, text
    assert not out.exists()


def test_connection_reset_mid_body_is_an_origin_error(origin, peer, tmp_path):
    # Each retry resumes the missing tail: 64 KiB per answer can never fill a 4 MiB
    # piece in the 5 attempts allowed, so the download fails every time.
    url = origin.add_file("reset.bin", size=2 * PIECE, seed=45)
    origin.set_faults(
        "/reset.bin", close_after={"bytes": 64 * 1024, "count": -1, "skip": 1, "reset": True}
    )
    out = tmp_path / "out"
    result = peer.dfget(url, out, "--no-progress")
    assert result.returncode == 4, result.stderr.decode()
    text = assert_readable(result.stderr)
    assert "origin closed the connection" in text, text
    assert not out.exists()
    assert peer.healthy()


@pytest.fixture
def tiny_fs(mount_tmpfs):
    """A real 24 MiB filesystem (tmpfs) for a data dir that can fill up."""
    return mount_tmpfs("tinyfs", "24m")


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no block left; return its path."""
    filler = directory / "filler"
    block = b"\0" * (256 * 1024)
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(block)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)
    assert os.statvfs(directory).f_bavail == 0
    return filler


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_data_dir_filling_mid_download_is_disk_full(origin, tmp_path, tiny_fs):
    """The content file is reserved (fallocate) at the start; then something else takes
    the rest of the filesystem, so recording a piece in metadata.db fails (SQLite's
    'database or disk is full'): dfget must say 'disk full' with exit 7."""
    size = 2 * PIECE
    url = origin.add_file("fills.bin", size=size, seed=46)
    # The probe answers; every piece request waits until the test lifts the hold.
    origin.set_faults("/fills.bin", hold={"count": -1, "skip": 1})
    data = tiny_fs / "data"
    with PeerProcess(tmp_path, storage={"data_dir": str(data)}) as peer:
        proc = peer.dfget_popen(url, tmp_path / "out", "--no-progress")
        content = data / "content" / "tasks" / task_id(url)[:3] / task_id(url)
        # Piece requests reach the origin only after the content file is reserved.
        wait_for(lambda: origin.stats("/fills.bin")["requests"] >= 2, "the piece requests")
        assert content.stat().st_blocks * 512 >= size
        filler = fill(tiny_fs)
        origin.set_faults("/fills.bin", hold=None)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 7, stderr.decode() + peer.log()[-3000:]
        text = assert_readable(stderr)
        assert "no space left" in text, text
        assert not (tmp_path / "out").exists()
        # The daemon keeps serving once there is room again.
        filler.unlink()
        origin.reset()
        again = peer.dfget(url, tmp_path / "again", "--no-progress")
        assert again.returncode == 0, again.stderr.decode()
        assert (tmp_path / "again").read_bytes() == origin.content("fills.bin")


def test_streamed_download_filling_the_data_dir_is_disk_full(origin, tmp_path, tiny_fs):
    """No Content-Length: nothing can be reserved, the write itself hits ENOSPC."""
    url = origin.add_file("stream-fills.bin", size=8 * PIECE, seed=47)  # 32 MiB > 24 MiB
    origin.set_faults("/stream-fills.bin", range=False, content_length=False)
    with PeerProcess(tmp_path, storage={"data_dir": str(tiny_fs / "data")}) as peer:
        result = peer.dfget(url, tmp_path / "out", "--no-progress")
        assert result.returncode == 7, result.stderr.decode()
        assert "no space left" in assert_readable(result.stderr)
        assert not (tmp_path / "out").exists()
        assert os.statvfs(tiny_fs).f_bavail > 4 * PIECE // os.statvfs(tiny_fs).f_frsize, (
            "the failed task's bytes were not freed"
        )


def test_output_dir_full_fails_clearly_and_keeps_the_downloaded_task(
    origin, peer, tmp_path, tiny_fs
):
    """The download succeeds but the output's filesystem is full (another filesystem
    than the data dir's, so the bytes are copied, not linked): exit 7 naming the lack
    of space, nothing half-written at or beside the output, and the task stays in the
    daemon's storage: once there is room, the next dfget needs nothing from the origin."""
    size = 2 * PIECE + 7
    url = origin.add_file("no-room-out.bin", size=size, seed=48)
    out_dir = tiny_fs / "out"
    out_dir.mkdir()
    filler = fill(tiny_fs)
    result = peer.dfget(url, out_dir / "x.bin", "--no-progress")
    assert result.returncode == 7, result.stderr.decode() + peer.log()[-3000:]
    assert "no space left" in assert_readable(result.stderr)
    assert list(out_dir.iterdir()) == [], "a partial or temporary output was left behind"
    sent = origin.stats("/no-room-out.bin")["bytes_sent"]
    assert sent >= size
    filler.unlink()
    again = peer.dfget(url, out_dir / "x.bin", "--no-progress")
    assert again.returncode == 0, again.stderr.decode()
    assert (out_dir / "x.bin").read_bytes() == origin.content("no-room-out.bin")
    assert origin.stats("/no-room-out.bin")["bytes_sent"] == sent
    assert peer.healthy()


def test_redirect_loop_is_an_origin_error_naming_the_redirects(origin, peer, tmp_path):
    result = peer.dfget(origin.url("redirect-loop"), tmp_path / "out", "--no-progress")
    assert result.returncode == 4, result.stderr.decode()
    text = assert_readable(result.stderr)
    assert "redirect" in text.lower(), text
    assert not (tmp_path / "out").exists()
    assert origin.stats("redirect-loop")["requests"] <= 11 * 3  # bounded, with retries
    assert peer.healthy()
