"""The scheduler's answer loop, sans-IO: follow a register/reschedule result to the
answer a peer is sent.

A round that finds no parent returns :class:`~d7y.core.scheduling.results.Retry`; a
registration that needs the seed peer returns
:class:`~d7y.core.scheduling.results.TriggerSeedPeer` wrapping the first round. The
scheduler daemon and the simulator both drive this loop (one copy, here)::

    step = first_step(result)
    while True:
        if step.trigger: tell step.trigger.seed_host_id to fetch the task
        if step.final is not None: send step.final; break
        wait step.wait seconds
        step = resume(scheduler, peer_id, now)
        if step is None: break          # the peer left meanwhile
"""

from __future__ import annotations

from typing import NamedTuple

from d7y.core.scheduling.errors import PeerStateError
from d7y.core.scheduling.results import Retry, TriggerSeedPeer
from d7y.core.scheduling.scheduler import Scheduler


class Step(NamedTuple):
    """What the driver does next: trigger a seed (or None), then either send ``final``
    or wait ``wait`` seconds and :func:`resume`."""

    trigger: TriggerSeedPeer | None
    wait: float | None
    final: object | None


def first_step(result: object) -> Step:
    """The step for a result of ``register_peer`` or ``reschedule``."""
    trigger = None
    if isinstance(result, TriggerSeedPeer):
        trigger, result = result, result.then
    if isinstance(result, Retry):
        return Step(trigger, result.retry_after, None)
    return Step(trigger, None, result)


def resume(scheduler: Scheduler, peer_id: str, now: float) -> Step | None:
    """The next round after a wait; None if the peer is gone (left, collected), or in a
    state with nothing to schedule (it finished meanwhile)."""
    peer = scheduler.peers.get(peer_id)
    if peer is None:
        return None
    try:
        return first_step(scheduler.reschedule(peer_id, [], now))
    except PeerStateError:
        return None


__all__ = ["Step", "first_step", "resume"]
