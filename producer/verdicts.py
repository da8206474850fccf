"""Moved to ``workers/verdicts.py`` (the scheduled verify runs on the workers); the names stay
importable here for the producer's callers."""

from workers.verdicts import DRIFT as DRIFT
from workers.verdicts import EXIT_DRIFT as EXIT_DRIFT
from workers.verdicts import EXIT_OK as EXIT_OK
from workers.verdicts import EXIT_UNCHECKED as EXIT_UNCHECKED
from workers.verdicts import IN_PLACE as IN_PLACE
from workers.verdicts import MISSING as MISSING
from workers.verdicts import NOT_LANDED as NOT_LANDED
from workers.verdicts import STATES as STATES
from workers.verdicts import SUPERSEDED as SUPERSEDED
from workers.verdicts import TAG_MOVED as TAG_MOVED
from workers.verdicts import UNREACHABLE as UNREACHABLE
from workers.verdicts import Report as Report
from workers.verdicts import TagVerdict as TagVerdict
from workers.verdicts import Verdict as Verdict
from workers.verdicts import classify as classify
from workers.verdicts import not_landed as not_landed
from workers.verdicts import tags_of as tags_of
