"""Celery workers: one task per destination (``tasks``), its decisions (``runner``), the release
ledger (``ledger``), the (destination, digest) lock (``locks``), settings, routing, and the app."""
