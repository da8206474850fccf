"""``fanout retry RELEASE``: send a release's failed destinations again, as new attempts."""

from __future__ import annotations

import argparse
import os
import sys

from .status_cmd import (
    EXIT_CODES_HELP,
    TransitionPrinter,
    add_wait_flags,
    check_wait_flags,
    show,
    wait_all,
)


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
    parser.add_argument("--broker", metavar="URL",
                        help="broker URL (default: $FANOUT_BROKER_URL, else "
                             "redis://localhost:6379/0)")
    add_wait_flags(parser)
    parser.add_argument("--json", action="store_true",
                        help="print the release as JSON (with --wait: its final state)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from . import api  # Celery and Redis load only for commands that need them
    check_wait_flags(args)
    env = os.environ
    ledger = api.connect_ledger(api.queue_settings(env, args.broker))
    sent = api.retry(args.release, args.dest, env=env, broker_url=args.broker, ledger=ledger)
    if sent:
        print(f"{args.release}: sent again {len(sent)} destination(s): {', '.join(sent)}",
              file=sys.stderr, flush=True)
    else:
        print(f"{args.release}: nothing to retry (no destination failed for good)",
              file=sys.stderr, flush=True)
    if args.wait:
        releases = wait_all([args.release], ledger, timeout=args.timeout, poll=args.poll,
                            on_poll=TransitionPrinter(sys.stderr))
        return show(releases, as_json=args.json, out=sys.stdout)
    release = api.status(args.release, ledger=ledger)
    if args.json:
        show([release], as_json=True, out=sys.stdout)
    # Sent: done, as `enqueue` without --wait. Nothing sent: how the release stands.
    return api.EXIT_OK if sent else api.exit_code([release])
