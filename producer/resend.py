"""Moved to ``workers/resend.py`` (a scheduled verify's repair sends as ``fanout retry``
does); the name stays importable here for the producer's callers."""

from workers.resend import resend as resend
