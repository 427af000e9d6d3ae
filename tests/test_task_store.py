"""The task store (daemons/peer/task_store.py) in-process, over a real data dir: what
every download path relies on when it lands, resumes, reads and serves a task."""

from __future__ import annotations

import asyncio
import os
import zlib

import pytest

from d7y.core.pieces import iter_pieces
from d7y.daemons.peer.storage import TASK_FAILED, TASK_SUCCEEDED, Storage
from d7y.daemons.peer.task import DownloadError, DownloadRequest, FailureKind, Task
from d7y.daemons.peer.task_store import FROM_ORIGIN, TaskStore

PIECE = 4 * 1024 * 1024
CONTENT = bytes(range(256)) * (PIECE * 3 // 256 - 100)  # three pieces, the last short


def make_task(url: str = "http://origin.test/blob") -> Task:
    request = DownloadRequest(url=url, piece_length=PIECE)
    task = Task(request.task_id(), request)
    task.content_length = len(CONTENT)
    task.piece_length = PIECE
    return task


def run(coro_fn, tmp_path, **store_args):
    async def main():
        storage = Storage(tmp_path / "data", quota=store_args.pop("quota", 0))
        try:
            return await coro_fn(TaskStore(storage, **store_args))
        finally:
            storage.close()

    return asyncio.run(main())


async def land(store: TaskStore, task: Task, numbers: list[int]) -> None:
    await store.begin(task, None)
    async with store.open(task, task.content_length) as file:
        await file.resume()
        for piece in iter_pieces(len(CONTENT), PIECE):
            if piece.number in numbers:
                data = memoryview(CONTENT)[piece.offset : piece.offset + piece.length]
                await file.land(piece, data, FROM_ORIGIN)
    await store.finish_writing(task.id)


def test_landed_pieces_are_recorded_announced_and_resumed_only_while_intact(tmp_path):
    async def scenario(store: TaskStore):
        announced = []
        store.piece_listeners.append(lambda tid, n, digest: announced.append((tid, n, digest)))
        task = make_task()
        await land(store, task, [0, 2])
        pieces = list(iter_pieces(len(CONTENT), PIECE))
        crc = {p.number: zlib.crc32(CONTENT[p.offset : p.offset + p.length]) for p in pieces}
        assert announced == [(task.id, 0, f"crc32:{crc[0]}"), (task.id, 2, f"crc32:{crc[2]}")]
        assert await store.recorded_digests(task.id) == {
            0: f"crc32:{crc[0]}",
            2: f"crc32:{crc[2]}",
        }
        assert task.completed_bytes == pieces[0].length + pieces[2].length
        assert task.bytes_from_origin == task.completed_bytes

        # Piece 2 is damaged on disk: the next download keeps piece 0 only.
        with open(store.storage.content_path(task.id), "r+b") as f:
            f.seek(pieces[2].offset + 10)
            f.write(b"\xff\x00\xff")
        again = make_task()
        async with store.open(again, again.content_length) as file:
            await file.resume()
        await store.finish_writing(again.id)
        assert list(again.bitmap.iter_set()) == [0]
        assert again.completed_bytes == pieces[0].length
        assert set(await store.recorded_digests(task.id)) == {0}
        return store.metrics.registry.get_sample_value("d7y_peer_corrupt_pieces_total")

    assert run(scenario, tmp_path) == 1


def test_a_damaged_piece_of_a_held_task_is_not_served_and_the_task_is_withdrawn(tmp_path):
    async def scenario(store: TaskStore):
        withdrawn = []

        async def on_withdrawn(task_id: str) -> None:
            withdrawn.append(task_id)

        store.withdrawn_listeners.append(on_withdrawn)
        task = make_task()
        await land(store, task, [0, 1, 2])
        await store.mark_succeeded(task)
        whole = await store.check_before_serving(task.id, 0, len(CONTENT), None, running=None)
        assert whole is None

        with open(store.storage.content_path(task.id), "r+b") as f:
            f.seek(PIECE + 1)
            f.write(b"\x00\x01\x02")
        # A range that does not touch the damaged piece is still served.
        assert await store.check_before_serving(task.id, 0, PIECE, None, running=None) is None
        reason = await store.check_before_serving(task.id, PIECE, 10, None, running=None)
        record = await store.record(task.id)
        return reason, record.state, set(await store.recorded_digests(task.id)), withdrawn, task.id

    reason, state, recorded, withdrawn, task_id = run(scenario, tmp_path)
    assert reason is not None and "piece 1 " in reason and "failed its CRC-32 check" in reason
    assert state == TASK_FAILED
    assert recorded == {0, 2}
    assert withdrawn == [task_id]


def test_read_in_order_waits_for_each_piece_and_yields_the_bytes_in_order(tmp_path):
    async def scenario(store: TaskStore):
        task = make_task()
        await store.begin(task, None)
        pieces = list(iter_pieces(len(CONTENT), PIECE))
        received = bytearray()

        async def reader() -> None:
            async for block in store.read_in_order(task):
                received.extend(block)

        async with store.open(task, task.content_length) as file:
            await file.resume()
            reading = asyncio.ensure_future(reader())
            for number in (2, 1, 0):  # landing out of order
                piece = pieces[number]
                data = memoryview(CONTENT)[piece.offset : piece.offset + piece.length]
                await file.land(piece, data, "peer-a")
                await asyncio.sleep(0)
                # Nothing past a missing piece is ever handed out.
                assert len(received) <= (0 if number else len(CONTENT))
        task.done.set_result(None)
        task.notify_change()
        await reading
        await store.finish_writing(task.id)
        return bytes(received), task.bytes_from_peers, store.pinned()

    received, from_peers, pinned = run(scenario, tmp_path)
    assert received == CONTENT
    assert from_peers == len(CONTENT)
    assert pinned == set()  # the reader's pin is released


def test_open_makes_room_once_when_the_quota_is_full(tmp_path):
    asked = []

    async def scenario(store: TaskStore):
        old = make_task("http://origin.test/old")
        await land(store, old, [0, 1, 2])

        async def make_room(wanted: int) -> None:
            asked.append(wanted)
            await store.delete(old.id)

        store.make_room = make_room
        new = make_task("http://origin.test/new")
        async with store.open(new, new.content_length):
            pass
        return store.storage.content_path(old.id).exists(), await store.record(old.id)

    old_exists, old_record = run(scenario, tmp_path, quota=len(CONTENT) + PIECE)
    assert asked == [len(CONTENT)]
    assert not old_exists and old_record is None


def test_open_without_room_fails_with_no_space_naming_the_quota(tmp_path):
    async def scenario(store: TaskStore):
        await land(store, make_task("http://origin.test/old"), [0])
        new = make_task("http://origin.test/new")
        with pytest.raises(DownloadError) as failure:
            async with store.open(new, new.content_length):
                pass
        return failure.value

    failure = run(scenario, tmp_path, quota=len(CONTENT) + PIECE)
    assert failure.kind is FailureKind.NO_SPACE
    assert "storage.quota" in str(failure)


def test_a_finished_task_loads_whole_and_a_missing_file_drops_it(tmp_path):
    async def scenario(store: TaskStore):
        task = make_task()
        await land(store, task, [0, 1, 2])
        await store.mark_succeeded(task)
        loaded = make_task()
        record = await store.record(task.id)
        assert record.state == TASK_SUCCEEDED
        whole = await store.load_whole(loaded, record, None)
        os.unlink(store.storage.content_path(task.id))
        gone = await store.load_whole(make_task(), record, None)
        return whole, loaded.from_cache, loaded.bitmap.all(), gone, await store.record(task.id)

    whole, from_cache, complete, gone, record_after = run(scenario, tmp_path)
    assert whole and from_cache and complete
    assert not gone and record_after is None
