"""dfdaemon's scheduler client against a real ``d7y scheduler`` process: a download
stream's ``on_answer`` fires when an answer arrives (the P2P loop wakes on it instead of
on its next tick) and when the connection is lost."""

from __future__ import annotations

import asyncio

from d7y.core import messages as m
from d7y.daemons.peer.scheduler_client import SchedulerClient
from tests.peer_harness import SchedulerProcess

TASK = "c" * 64


def _announce() -> m.AnnounceHost:
    return m.AnnounceHost(
        host_id="host-client", ip="127.0.0.1", hostname="client", port=1, download_port=2
    )


async def _client(scheduler: SchedulerProcess) -> SchedulerClient:
    client = SchedulerClient(
        "127.0.0.1", scheduler.port, announce=_announce, on_trigger=lambda _t: None
    )
    client.start()
    await asyncio.wait_for(client.connected.wait(), 30)
    return client


def test_an_answer_wakes_the_stream_owner(tmp_path):
    async def scenario() -> None:
        with SchedulerProcess(tmp_path) as scheduler:
            client = await _client(scheduler)
            try:
                stream = client.open_download()
                woken = asyncio.Event()
                stream.on_answer = woken.set
                await stream.send(m.GetTaskDigests(peer_id="peer-client", task_id=TASK))
                # The event is the point of the test: a timeout here means no wake-up.
                await asyncio.wait_for(woken.wait(), 30)
                # The scheduler does not know the task: its answer is an error naming it.
                answers = stream.pending()
                assert len(answers) == 1 and isinstance(answers[0], m.Error), answers
                assert TASK in answers[0].message and not stream.broken
            finally:
                await client.close()

    asyncio.run(scenario())


def test_a_lost_connection_wakes_the_stream_owner(tmp_path):
    async def scenario() -> None:
        scheduler = SchedulerProcess(tmp_path)
        with scheduler:
            client = await _client(scheduler)
            stream = client.open_download()
            woken = asyncio.Event()
            stream.on_answer = woken.set
        try:  # the scheduler process has stopped
            await asyncio.wait_for(woken.wait(), 30)
            assert stream.pending() == [] and stream.broken
        finally:
            await client.close()

    asyncio.run(scenario())
