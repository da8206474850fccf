"""Ending ``fanout copy`` without tearing the interpreter down.

Python's ordinary exit clears every module and frees every object one by one: some 40 ms of CPU
after a copy (some 450 modules loaded), as much as loading httpx, for a process whose memory the
kernel is about to take back whole. Once ``main`` has returned, a copy has closed what it opened
(files, connections, its spool: each in a ``with``), so what the ordinary exit still has to do is
run the ``atexit`` hooks (logging flushes its handlers there) and flush stdout and stderr; this
does those and ends the process with ``os._exit``.

It takes the ordinary exit whenever that could do more: another thread still running (the
interpreter would wait for it), a profiler or tracer installed (cProfile and coverage write
their results after the program returns), output that cannot be flushed (a closed pipe: the
ordinary exit reports it), or a Python without ``atexit._run_exitfuncs``.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def exit_quickly(code: int) -> NoReturn:
    """End the process with ``code``: quickly when nothing is left to wind down, else as
    ``sys.exit`` does."""
    run_hooks = getattr(atexit, "_run_exitfuncs", None)
    if run_hooks is None or not _only_output_left():
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)
    run_hooks()
    try:
        sys.stdout.flush()  # what the hooks printed
        sys.stderr.flush()
    except (OSError, ValueError):
        os._exit(code or 120)  # as the ordinary exit reports a failed flush
    os._exit(code)


def _only_output_left() -> bool:
    if sys.gettrace() is not None or sys.getprofile() is not None:
        return False
    main = threading.main_thread()
    return not any(thread is not main and not thread.daemon and thread.is_alive()
                   for thread in threading.enumerate())
