"""Moved to ``workers/verify_heads.py`` (the scheduled verify runs on the workers); the names
stay importable here for the producer's callers."""

from workers.verify_heads import DEFAULT_CONCURRENCY as DEFAULT_CONCURRENCY
from workers.verify_heads import VERIFY_RETRY as VERIFY_RETRY
from workers.verify_heads import Answer as Answer
from workers.verify_heads import Heads as Heads
from workers.verify_heads import Key as Key
