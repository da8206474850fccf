"""Moved to ``workers/verify_plan.py`` (the scheduled verify runs on the workers); the names
stay importable here for the producer's callers and ``fanout serve``."""

from workers.verify_plan import RepairRefused as RepairRefused
from workers.verify_plan import Target as Target
from workers.verify_plan import hold_back as hold_back
from workers.verify_plan import repository as repository
from workers.verify_plan import select as select
from workers.verify_plan import under_way as under_way
