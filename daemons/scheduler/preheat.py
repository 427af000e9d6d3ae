"""Preheat on the scheduler's side: take the cluster's preheat tasks from the manager,
make a seed peer fetch each one, report how it ended.

:class:`PreheatWorker` long-polls the manager over the scheduler's manager connection
(``POST /api/v1/schedulers/{id}/jobs/claim``) for at most ``manager.preheat_concurrency``
tasks at a time and reports each result (``.../jobs/report``). :class:`SeedPreheater`
does one task: the seed host the hash ring assigns to the task ID (the one a peer's
registration would trigger, so a later download finds it there) gets the scheduler's
ordinary ``TriggerSeed``; the seed peer registers for the task, fetches it from the
origin and reports DownloadFinished or DownloadFailed, which the scheduler's dispatch
hands to :meth:`SeedPreheater.observe`. A seed peer that already holds the task is a
success at once. That is scope ``single_seed_peer``; ``all_seed_peers`` sends the same
trigger to every connected seed peer, ``all_peers`` to every connected host: an ordinary
peer takes it as an ordinary P2P download (the peer daemon's ``_on_trigger``), so it
fetches from the seed peers rather than the origin. Each host's result is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, NamedTuple

import aiohttp

from d7y.core import ids
from d7y.core import messages as m
from d7y.core.states import PeerState

if TYPE_CHECKING:
    from d7y.daemons.scheduler.manager_client import ManagerClient
    from d7y.daemons.scheduler.server import SchedulerService

log = logging.getLogger("d7y.scheduler")

SUCCESS, FAILURE = "SUCCESS", "FAILURE"
#: Seconds the manager may hold a claim open waiting for tasks (under CALL_TIMEOUT).
CLAIM_WAIT = 5.0
#: Tries to deliver one result to the manager before it is given up (the manager then
#: hands the task out again once this scheduler is seen gone, or times the job out).
REPORT_ATTEMPTS = 5


#: Which hosts of the cluster download a preheated task (the manager's args.scope).
SCOPES = ("single_seed_peer", "all_seed_peers", "all_peers")


class Outcome(NamedTuple):
    state: str
    seed_peer: str = ""
    error: str = ""


class SeedPreheater:
    def __init__(self, service: SchedulerService) -> None:
        self.service = service
        self._waiters: dict[tuple[str, str], list[asyncio.Future[Outcome]]] = {}

    async def preheat(
        self,
        url: str,
        task_id: str,
        *,
        tag: str = "",
        application: str = "",
        piece_length: int = 0,
        filtered_query_params: list[str] | None = None,
        headers: dict[str, str] | None = None,
        scope: str = "single_seed_peer",
        timeout: float = 1800.0,
    ) -> list[Outcome]:
        """Have the task downloaded by the hosts ``scope`` names; one outcome per host
        (one only, without a host, when none can be asked)."""
        try:
            expected = ids.task_id(
                url,
                tag=tag or None,
                application=application or None,
                piece_length=piece_length or None,
                filtered_query_params=filtered_query_params,
            )
        except (ValueError, TypeError) as exc:
            return [Outcome(FAILURE, error=f"{url}: cannot compute its task ID: {exc}")]
        if expected != task_id:
            return [Outcome(
                FAILURE,
                error=f"{url}: the manager's task ID {task_id} differs from this scheduler's "
                f"{expected} (different d7y versions?)",
            )]  # fmt: skip
        trigger = m.TriggerSeed(
            task_id=task_id,
            url=url,
            tag=tag,
            application=application,
            filtered_query_params=filtered_query_params,
            headers=dict(headers or {}),
            piece_length=piece_length,
        )
        if scope == "single_seed_peer":
            return [await self._one_seed(trigger, timeout)]
        if scope not in SCOPES:
            return [Outcome(FAILURE, error=f"{url}: unknown scope {scope!r}; use one of {SCOPES}")]
        seeds = [
            h for h in self.service.core.seed_hosts_for(task_id) if h in self.service.host_conns
        ]
        hosts = seeds
        if scope == "all_peers":
            hosts = seeds + sorted(h for h in self.service.host_conns if h not in seeds)
        if not hosts:
            what = "seed peer" if scope == "all_seed_peers" else "host"
            return [Outcome(
                FAILURE,
                error=f"{url}: no {what} is connected to the scheduler on port "
                f"{self.service.port}; start one with this scheduler",
            )]  # fmt: skip
        return list(await asyncio.gather(*(self._on_host(h, trigger, timeout) for h in hosts)))

    async def _one_seed(self, trigger: m.TriggerSeed, timeout: float) -> Outcome:
        """Scope single_seed_peer: the seed peer a peer's registration would trigger (the
        hash ring's owner of the task), or the next connected one; a seed peer that holds
        the task already is a success at once."""
        core, url = self.service.core, trigger.url
        task = core.tasks.get(trigger.task_id)
        failed: set[str] = set()
        if task is not None:
            for peer_id in task.seed_peers:
                peer = core.peers.get(peer_id)
                if peer is not None and peer.fsm.state is PeerState.SUCCEEDED:
                    return Outcome(SUCCESS, peer.host.id)
            failed = set(task.failed_seed_hosts)
        connected = [
            h for h in core.seed_hosts_for(trigger.task_id) if h in self.service.host_conns
        ]
        if not connected:
            return Outcome(
                FAILURE,
                error=f"{url}: no seed peer is connected to the scheduler on port "
                f"{self.service.port}; start one (seed_peer: true) with this scheduler",
            )
        host_id = ([h for h in connected if h not in failed] or connected)[0]
        return await self._on_host(host_id, trigger, timeout)

    def _holds(self, host_id: str, task_id: str) -> bool:
        task = self.service.core.tasks.get(task_id)
        return task is not None and any(
            peer.host.id == host_id and peer.fsm.state is PeerState.SUCCEEDED
            for peer in task.peers.values()
        )

    async def _on_host(self, host_id: str, trigger: m.TriggerSeed, timeout: float) -> Outcome:
        """One host downloads the task: the scheduler's TriggerSeed on its connection (a
        seed peer fetches from the origin, an ordinary peer downloads P2P), then its
        DownloadFinished or DownloadFailed (:meth:`observe`)."""
        url, task_id = trigger.url, trigger.task_id
        if self._holds(host_id, task_id):
            return Outcome(SUCCESS, host_id)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        key = (task_id, host_id)
        self._waiters.setdefault(key, []).append(future)
        try:
            conn = self.service.host_conns.get(host_id)
            if conn is None:
                return Outcome(FAILURE, host_id, f"{url}: the host is no longer connected")
            log.info("preheat trigger host=%s task=%s url=%s", host_id, task_id, url)
            if not await conn.send(trigger, conn.open_stream()):
                return Outcome(FAILURE, host_id, f"{url}: the connection to the host is gone")
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return Outcome(
                FAILURE, host_id, f"{url}: the host did not finish it within {timeout:g}s"
            )
        finally:
            waiting = self._waiters.get(key, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._waiters.pop(key, None)

    def observe(self, host_id: str | None, message: m.Message) -> None:
        """A report from a host's connection: a seed's download of a task ended."""
        if host_id is None or not self._waiters:
            return
        if isinstance(message, m.DownloadFinished) or (
            isinstance(message, m.RestorePeer) and message.succeeded
        ):
            self._resolve((message.task_id, host_id), Outcome(SUCCESS, host_id))
        elif isinstance(message, m.DownloadFailed):
            url = self._url(message.task_id)
            reason = message.reason or "the seed peer failed"
            self._resolve(
                (message.task_id, host_id),
                # The seed's reason usually names the URL already: say it once.
                Outcome(FAILURE, host_id, reason if url in reason else f"{url}: {reason}"),
            )

    def host_gone(self, host_id: str) -> None:
        for key in [k for k in self._waiters if k[1] == host_id]:
            url = self._url(key[0])
            self._resolve(key, Outcome(FAILURE, host_id, f"{url}: the seed peer disconnected"))

    def _url(self, task_id: str) -> str:
        task = self.service.core.tasks.get(task_id)
        return task.url if task is not None else f"task {task_id}"

    def _resolve(self, key: tuple[str, str], outcome: Outcome) -> None:
        for future in self._waiters.pop(key, []):
            if not future.done():
                future.set_result(outcome)


class PreheatWorker:
    def __init__(self, client: ManagerClient, preheater: SeedPreheater, concurrency: int):
        self.client = client
        self.preheater = preheater
        self.concurrency = max(1, concurrency)
        self._inflight: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        for task in [self._task, *self._inflight]:
            if task is not None:
                task.cancel()
        for task in [self._task, *self._inflight]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        retry = float(self.client.settings.keepalive_interval)
        while True:
            await self.client.registered.wait()
            scheduler_id = self.client.scheduler_id
            free = self.concurrency - len(self._inflight)
            if scheduler_id is None:  # dropped meanwhile; registration sets it again
                await asyncio.sleep(retry)
                continue
            if free <= 0:
                await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                status, answer = await self.client.call(
                    "POST",
                    f"/api/v1/schedulers/{scheduler_id}/jobs/claim",
                    {"max_tasks": free, "wait": CLAIM_WAIT},
                )
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                log.debug("preheat claim failed: %s", exc.__class__.__name__)
                await asyncio.sleep(retry)
                continue
            if status != 200 or not isinstance(answer, list):
                log.warning("preheat claim refused: %s %s", status, _message(answer))
                await asyncio.sleep(retry)
                continue
            for item in answer:
                task = asyncio.get_running_loop().create_task(self._one(scheduler_id, item))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)

    async def _one(self, scheduler_id: int, item: dict[str, Any]) -> None:
        try:
            outcomes = await self.preheater.preheat(
                item["url"],
                item["task_id"],
                tag=item.get("tag", ""),
                application=item.get("application", ""),
                piece_length=int(item.get("piece_length") or 0),
                filtered_query_params=item.get("filtered_query_params"),
                headers=item.get("headers") or {},
                scope=item.get("scope", "single_seed_peer"),
                timeout=float(item.get("timeout", 1800.0)),
            )
        except Exception as exc:  # a bug: report it as the task's failure, keep serving
            log.exception("preheat task %s crashed", item.get("id"))
            outcomes = [Outcome(FAILURE, error=f"{item.get('url')}: scheduler error: {exc!r}")]
        for outcome in outcomes:
            log.info(
                "preheat %s task=%s seed=%s%s",
                outcome.state, item["task_id"], outcome.seed_peer,
                f" error={outcome.error}" if outcome.error else "",
            )  # fmt: skip
        # One item per host: the manager keeps a result row for each.
        report = {
            "tasks": [
                {"id": item["id"], **outcome._asdict(), "error": outcome.error[:8192]}
                for outcome in outcomes
            ]
        }
        for attempt in range(REPORT_ATTEMPTS):
            try:
                status, answer = await self.client.call(
                    "POST", f"/api/v1/schedulers/{scheduler_id}/jobs/report", report
                )
                if status == 200:
                    return
                log.warning("preheat report refused: %s %s", status, _message(answer))
                return
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                await asyncio.sleep(float(self.client.settings.keepalive_interval) * (attempt + 1))
        log.warning("preheat result of task %s not delivered to the manager", item["id"])


def _message(answer: Any) -> str:
    return answer.get("message", "") if isinstance(answer, dict) else ""
