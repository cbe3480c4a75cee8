"""Faults injected into a running worker, for the chaos tests (loaded with the test tasks).

``testing_stall_consumer`` (a remote control command, so it reaches one worker by
its hostname and runs in its main process, where the consumer lives) makes the
worker's task channel report no prefetch credit. That is how the stall of issue
19 looked from the transport: requests that failed were never acknowledged, their
deliveries kept the credit, kombu stopped polling the queues while the pool sat
idle; the worker still answered ping (control commands use another channel).
Nothing else is changed: queues, Redis and the pool stay as they are.

``persist=True`` patches the QoS class instead of the channel's instance, so the
channel a consumer restart creates stalls too: a fault only a new process cures.
"""

from __future__ import annotations

from celery.worker.control import control_command


def _no_credit(*_args) -> bool:
    return False


@control_command(args=[("persist", bool)], signature="[persist]")
def testing_stall_consumer(state, persist=False):
    channel = state.consumer.task_consumer.channel
    if persist:
        type(channel.qos).can_consume = _no_credit
    else:
        channel.qos.can_consume = _no_credit
    return {"ok": f"task channel stalled ({'every channel' if persist else 'this channel'})"}
