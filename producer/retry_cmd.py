"""``fanout retry RELEASE``: send a release's failed destinations again, as new attempts."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .common import add_broker_flag
from .status_cmd import (
    EXIT_CODES_HELP,
    TransitionPrinter,
    add_server_flag,
    add_wait_flags,
    check_wait_flags,
    show,
    wait_all,
)

if TYPE_CHECKING:
    from workers.records import Release

    from .server_client import ServerSettings


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "retry", help="send a release's failed destinations again",
        description="Send again the destinations of RELEASE that failed for good (or only the "
                    "--dest ones: failed or succeeded, not still under way), as new attempts "
                    "of the same release; every earlier attempt stays in its history. With "
                    f"--wait: {EXIT_CODES_HELP} An unknown RELEASE, or a --dest not in it, "
                    "exits 2.",
    )
    parser.add_argument("release", metavar="RELEASE", help="release id printed by enqueue")
    parser.add_argument("--dest", action="extend", nargs="+", default=[], metavar="D",
                        help="retry only these destinations (repeatable)")
    add_broker_flag(parser)
    add_wait_flags(parser)
    parser.add_argument("--json", action="store_true",
                        help="print the release as JSON (with --wait: its final state)")
    add_server_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .server_client import server_settings
    check_wait_flags(args)
    env = os.environ
    server = server_settings(args.server, env)
    if server is not None:
        return run_on_server(args, server)
    from . import api  # Celery and Redis load only for commands that need them
    ledger = api.connect_ledger(api.queue_settings(env, args.broker))
    sent = api.retry(args.release, args.dest, env=env, broker_url=args.broker, ledger=ledger)
    say_sent(args.release, sent)
    if args.wait:
        releases = wait_all([args.release], ledger, timeout=args.timeout, poll=args.poll,
                            on_poll=TransitionPrinter(sys.stderr))
        return show(releases, as_json=args.json, out=sys.stdout)
    release = api.status(args.release, ledger=ledger)
    return finish(sent, release, as_json=args.json)


def say_sent(release_id: str, sent: Sequence[str]) -> None:
    if sent:
        print(f"{release_id}: sent again {len(sent)} destination(s): {', '.join(sent)}",
              file=sys.stderr, flush=True)
    else:
        print(f"{release_id}: nothing to retry (no destination failed for good)",
              file=sys.stderr, flush=True)


def finish(sent: Sequence[str], release: Release, *, as_json: bool) -> int:
    """Without --wait. Sent: done, as `enqueue` without --wait. Nothing sent: how the release
    stands."""
    from workers.release_document import exit_code
    if as_json:
        show([release], as_json=True, out=sys.stdout)
    return 0 if sent else exit_code([release])


def run_on_server(args: argparse.Namespace, server: ServerSettings) -> int:
    """``retry --server``: the same output and exit codes, through ``fanout serve``."""
    from . import server_client
    server_client.refuse_broker_flags({"--broker": args.broker})
    with server_client.ServerClient(server) as client:
        sent, release = client.retry(args.release, args.dest)
        say_sent(args.release, sent)
        if args.wait:
            releases = server_client.wait_all(client, [args.release], timeout=args.timeout,
                                              poll=args.poll, on_poll=TransitionPrinter(sys.stderr))
            return show(releases, as_json=args.json, out=sys.stdout)
    return finish(sent, release, as_json=args.json)
