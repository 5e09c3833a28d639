"""Worker module for the test of an occurrence no worker can fire: it imports no model
(so firing fails with UnknownModelError) and gives the occurrence handler one retry a
second later instead of its ~4 minutes of retries (``occurrences.POLICY``), so the test
sees the failed job. Test-only: the handler and its failure path are the real ones."""

from __future__ import annotations

from earnevents import keys
from earnevents.handlers import registry
from earnevents.retry import RetryPolicy
from earnevents.worker import occurrences

registry.register_targeted(
    keys.OCCURRENCE_HANDLER, occurrences.fire, RetryPolicy(max_retries=1, interval_start=1.0, interval_max=1.0)
)
