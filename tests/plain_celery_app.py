"""A plain Celery app, as another team would run on the same Redis database as earnevents.

Celery's defaults except late acknowledgement, so a running task stays unacknowledged in
kombu's records (its visibility timeout is kombu's default hour). Its one task records
each start and end in Redis.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

app = Celery("plain", broker=os.environ["PLAIN_BROKER_URL"])
app.conf.task_acks_late = True
app.conf.task_default_queue = os.environ["PLAIN_QUEUE"]

_client = redis.Redis.from_url(os.environ["PLAIN_BROKER_URL"])


@app.task(name="plain.long")
def long_task(tok: str, seconds: float) -> None:
    _client.rpush(f"plain:{tok}", "start")
    time.sleep(seconds)
    _client.rpush(f"plain:{tok}", "end")
