"""Given metrics on in a publishing process, published events are counted per queue and name."""

from __future__ import annotations

from prometheus_client import REGISTRY

import earnevents
from earnevents import Event


def published(queue: str, name: str) -> float:
    return REGISTRY.get_sample_value("earnevents_events_published_total", {"queue": queue, "event": name}) or 0.0


async def test_published_events_are_counted_when_metrics_are_on(redis_url, queue):
    # Given a process initialized with metrics on
    await earnevents.init(redis_uri=redis_url, mongo_uri="", event_config={"queue_name": queue, "metrics": True})
    try:
        # When it publishes two events now, a batch of three and a delayed one
        await earnevents.event_bus.publish(Event(name="m.one", data={}))
        await earnevents.event_bus.publish(Event(name="m.one", data={}))
        await earnevents.event_bus.publish_batch([Event(name="m.two", data={}) for _ in range(3)])
        await earnevents.event_bus.publish(Event(name="m.two", data={}), delay=60)
    finally:
        await earnevents.close()
    # Then the default registry counts them per queue and event name
    assert published(queue, "m.one") == 2
    assert published(queue, "m.two") == 4


async def test_published_events_are_not_counted_by_default(bus, queue):
    # Given a process initialized without metrics
    # When it publishes
    await bus.publish(Event(name="m.off", data={}))
    # Then nothing is counted
    assert published(queue, "m.off") == 0
