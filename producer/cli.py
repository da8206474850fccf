"""The ``fanout`` command: parse, dispatch, and turn errors into messages and exit codes.

Building the parser costs argparse and nothing else: every ``*_cmd`` module defines its flags
without loading its implementation (the engine, httpx, Celery, Redis, rich, prometheus_client),
which its ``run`` imports on use. ``fanout --help`` and ``fanout copy`` in a CI hook start fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import (
    check_cmd,
    copy_cmd,
    enqueue_cmd,
    export_cmd,
    import_cmd,
    metrics_cmd,
    replay_cmd,
    retry_cmd,
    serve_cmd,
    status_cmd,
    sync_cmd,
    verify_cmd,
)
from .common import UsageError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fanout",
        description="Copy one container image, pinned by digest, to many registries.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v: retries and decisions, -vv: every request)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    copy_cmd.add_parser(commands)
    enqueue_cmd.add_parser(commands)
    status_cmd.add_parser(commands)
    retry_cmd.add_parser(commands)
    replay_cmd.add_parser(commands)
    verify_cmd.add_parser(commands)
    export_cmd.add_parser(commands)
    import_cmd.add_parser(commands)
    sync_cmd.add_parser(commands)
    check_cmd.add_parser(commands)
    metrics_cmd.add_parser(commands)
    serve_cmd.add_parser(commands)
    return parser


def _configure_logging(verbosity: int) -> None:
    import logging

    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbosity < 3:
        # httpx logs every request URL at INFO; upload URLs carry opaque state we do not show.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("httpcore").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    code, _ = _run(argv)
    return code


def console() -> NoReturn:
    """The ``fanout`` console script, and ``python -m producer.cli``: main, then a command that
    asks for it (``fanout copy``) exits without tearing the interpreter down
    (:mod:`producer.quick_exit`)."""
    code, args = _run(None)
    if getattr(args, "quick_exit", False):
        from .quick_exit import exit_quickly

        exit_quickly(code)
    sys.exit(code)


def _run(argv: Sequence[str] | None) -> tuple[int, argparse.Namespace]:
    parser = build_parser()
    args = parser.parse_args(argv)
    return _dispatch(args), args


def _dispatch(args: argparse.Namespace) -> int:
    _configure_logging(args.verbose)
    _skip_unused_extras()
    # Loaded after parsing: every command's run needs them anyway, and --help has exited.
    from registry.envconfig import ConfigError
    from registry.errors import InvalidReference, RegistryError

    try:
        code: int = args.run(args)
    except (UsageError, InvalidReference, ConfigError) as exc:
        print(f"fanout {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RegistryError as exc:
        print(f"fanout {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"fanout {args.command}: interrupted", file=sys.stderr)
        return 130
    return code


# Optional integrations our dependencies load whenever they are installed, and no fanout
# command uses: httpx's own command-line client (click, rich, pygments) and tenacity's Tornado
# support (tornado comes with flower). Together about 0.2 s of every command's start-up. A None
# in sys.modules makes their guarded imports fail, so each library falls back as it does when
# the extra is not installed.
_UNUSED_EXTRAS = ("httpx._main", "tornado")


# Optional modules our dependencies look for again at every use when they are not installed
# (Python remembers a module it found, not one it did not): httpcore asks for sniffio each time
# it sets up a lock, some 200 times in a copy, each a search of sys.path (about 10 ms in all).
# An absent one gets the same None, which answers at once; an installed one is left alone.
_ASKED_FOR_OFTEN = ("sniffio",)


def _skip_unused_extras() -> None:
    import importlib.util

    for name in _UNUSED_EXTRAS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # the import protocol
    for name in _ASKED_FOR_OFTEN:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = None  # type: ignore[assignment]  # the import protocol


if __name__ == "__main__":  # pragma: no cover
    console()
