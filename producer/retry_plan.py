"""Moved to ``workers/retry_plan.py`` (a scheduled verify's repair picks destinations as
``fanout retry`` does); the names stay importable here for the producer's callers."""

from workers.retry_plan import RetryRefused as RetryRefused
from workers.retry_plan import pick as pick
from workers.retry_plan import task_for as task_for
