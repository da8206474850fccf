"""``fanout status RELEASE``: the ledger's view of a release, once or until it is done."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from workers.ledger import Ledger, Release

    from .server_client import ServerSettings


from .common import UsageError
from .table import print_recent, print_releases
from .waiting import wait_each

EXIT_CODES_HELP = ("Exit 0 when every destination succeeded, 1 when any failed for good, "
                   "3 when some are still queued, running or retrying (--wait timed out), "
                   "2 for usage errors; optional destinations count for nothing.")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "status", help="show a release: state, attempts, bytes and errors per destination",
        description=f"Show the release RELEASE from the ledger. {EXIT_CODES_HELP} "
                    "Without RELEASE: list the most recent releases, a line each.",
    )
    parser.add_argument("release", metavar="RELEASE", nargs="?",
                        help="release id printed by enqueue; omit to list recent releases")
    parser.add_argument("--limit", type=int, default=20, metavar="N",
                        help="without RELEASE: how many recent releases to list (default 20)")
    add_wait_flags(parser)
    parser.add_argument("--json", action="store_true", help="print the release as JSON")
    add_server_flag(parser)
    parser.set_defaults(run=run)


def add_server_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", metavar="URL",
                        help="go through `fanout serve` at URL instead of the broker and the "
                             "ledger (default: $FANOUT_SERVER); its token is read from "
                             "$FANOUT_TOKEN only, never a flag")


def add_wait_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true",
                        help="wait until every destination (but optional ones) succeeded or "
                             "failed for good")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="with --wait: give up after S seconds (exit 3); default: no limit")
    parser.add_argument("--poll", type=float, default=0.5, metavar="S",
                        help="with --wait: read the ledger every S seconds (default 0.5)")


def check_wait_flags(args: argparse.Namespace) -> None:
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout needs --wait")
    if args.timeout is not None and args.timeout < 0:
        raise UsageError(f"--timeout must not be negative, not {args.timeout}")
    if args.poll <= 0:
        raise UsageError(f"--poll must be positive, not {args.poll}")


class TransitionPrinter:
    """Prints each destination's state changes while waiting: a CI log shows progress."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._seen: dict[tuple[str, str], tuple[str, int]] = {}

    def __call__(self, release: Release) -> None:
        for name, record in sorted(release.destinations.items()):
            key, now = (release.id, name), (record.state, record.attempts)
            if self._seen.get(key) == now:
                continue
            self._seen[key] = now
            kind = " (optional)" if record.optional else ""
            line = f"{release.id} {name}{kind}: {record.state} (attempt {record.attempts})"
            if record.state in ("retrying", "failed") and record.last_error:
                line += f": {record.last_error}"
            print(line, file=self.out, flush=True)


def wait_all(
    ids: Sequence[str], ledger: Ledger, *, timeout: float | None, poll: float,
    on_poll: Callable[[Release], None] | None = None,
) -> list[Release]:
    """Wait for each release in turn, under one shared deadline."""
    from . import api  # Celery and Redis load only for commands that need them
    return wait_each(ids, lambda release_id, left: api.wait(
        release_id, timeout=left, poll=poll, ledger=ledger, on_poll=on_poll), timeout=timeout)


def release_json(release: Release) -> dict[str, Any]:
    # Built in workers/: a notification posts the very same document.
    from workers.release_document import release_document
    return release_document(release)


def show(releases: Sequence[Release], *, as_json: bool, out: TextIO) -> int:
    """Print the releases (table or JSON) and return the exit code they add up to."""
    from workers.release_document import exit_code  # not api's: --server loads no queue
    if as_json:
        documents = [release_json(r) for r in releases]
        print(json.dumps(documents[0] if len(documents) == 1 else {"releases": documents},
                         indent=2), file=out)
    else:
        print_releases(releases, out)
    return exit_code(releases)


def run(args: argparse.Namespace) -> int:
    from .server_client import server_settings
    check_wait_flags(args)
    server = server_settings(args.server, os.environ)
    if server is not None:
        return run_on_server(args, server)
    from . import api
    ledger = api.connect_ledger(api.queue_settings(os.environ))
    if args.release is None:
        if args.wait:
            raise UsageError("--wait needs a RELEASE")
        return list_recent(ledger, args.limit, as_json=args.json, out=sys.stdout)
    if args.wait:
        releases = wait_all([args.release], ledger, timeout=args.timeout, poll=args.poll,
                            on_poll=TransitionPrinter(sys.stderr))
    else:
        releases = [api.status(args.release, ledger=ledger)]
    # Exit 3 means "not finished" with or without --wait: a script can poll on it.
    return show(releases, as_json=args.json, out=sys.stdout)


def list_recent(ledger: Ledger, limit: int, *, as_json: bool, out: TextIO) -> int:
    """The newest releases, a line each: what an operator looks at first."""
    check_limit(limit)
    print_list(ledger.recent_releases(limit),
               as_json=as_json, out=out)
    return 0


def check_limit(limit: int) -> None:
    if limit < 1:
        raise UsageError(f"--limit must be at least 1, not {limit}")


def print_list(releases: Sequence[Release], *, as_json: bool, out: TextIO) -> None:
    if as_json:
        print(json.dumps({"releases": [release_json(r) for r in releases]}, indent=2), file=out)
    else:
        print_recent(releases, out)


def run_on_server(args: argparse.Namespace, server: ServerSettings) -> int:
    """``status --server``: the same output and exit codes, read from ``fanout serve``."""
    from . import server_client
    with server_client.ServerClient(server) as client:
        if args.release is None:
            if args.wait:
                raise UsageError("--wait needs a RELEASE")
            check_limit(args.limit)
            print_list(client.recent(args.limit), as_json=args.json, out=sys.stdout)
            return 0
        if args.wait:
            releases = server_client.wait_all(client, [args.release], timeout=args.timeout,
                                              poll=args.poll, on_poll=TransitionPrinter(sys.stderr))
        else:
            releases = [client.release(args.release)]
    return show(releases, as_json=args.json, out=sys.stdout)
