"""``fanout copy`` ends with os._exit only when nothing but output is left: the atexit hooks run,
stdout and stderr are flushed, and a running thread, a profiler or a tracer gets the ordinary
exit."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading

from producer import quick_exit
from tests.support.cli import REPO_ROOT

# Output stays in its buffers until flushed, as it does for the fanout console script.
BUFFERED = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=BUFFERED,
                          capture_output=True, text=True, check=False, timeout=60)


def test_output_and_atexit_hooks_survive_it() -> None:
    out = _python("import atexit, sys\n"
                  "from producer.quick_exit import exit_quickly\n"
                  "atexit.register(lambda: print('hook ran'))\n"
                  "print('result', end='')\n"  # left in stdout's buffer (a pipe)
                  "print('warning', end='', file=sys.stderr)\n"
                  "exit_quickly(3)\n"
                  "print('never')")
    assert out.returncode == 3
    assert out.stdout == "resulthook ran\n" and out.stderr == "warning"


def test_a_running_thread_gets_the_ordinary_exit() -> None:
    out = _python("import threading, time\n"
                  "from producer.quick_exit import exit_quickly\n"
                  "def late():\n"
                  "    time.sleep(0.3)\n"
                  "    print('thread finished', flush=True)\n"
                  "threading.Thread(target=late).start()\n"
                  "exit_quickly(0)")
    assert out.returncode == 0 and out.stdout == "thread finished\n"


def test_a_profiler_or_tracer_gets_the_ordinary_exit() -> None:
    assert quick_exit._only_output_left()
    sys.setprofile(lambda *args: None)
    try:
        assert not quick_exit._only_output_left()
    finally:
        sys.setprofile(None)
    event = threading.Event()
    worker = threading.Thread(target=event.wait)
    worker.start()
    try:
        assert not quick_exit._only_output_left()
    finally:
        event.set()
        worker.join()


def test_this_python_can_run_the_atexit_hooks() -> None:
    # Without it exit_quickly falls back to sys.exit: correct, just no quicker.
    assert callable(getattr(atexit, "_run_exitfuncs", None))


def test_a_closed_stdout_is_reported_as_the_ordinary_exit_would() -> None:
    code = ("import sys, time\nfrom producer.quick_exit import exit_quickly\n"
            "print('result')\n"  # buffered: the pipe is closed before it is flushed
            "time.sleep(0.5)\nexit_quickly(0)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env=BUFFERED,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader went away
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 120 and b"BrokenPipeError" in err
