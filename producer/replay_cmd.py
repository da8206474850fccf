"""``fanout replay --since 7d DEST…``: backfill recent releases to new destinations."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .common import UsageError, add_broker_flag, add_config_flag, add_optional_flag
from .status_cmd import (
    EXIT_CODES_HELP,
    TransitionPrinter,
    add_wait_flags,
    check_wait_flags,
    release_json,
    show,
    wait_all,
)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "replay", help="copy the images released recently to new destinations (backfill)",
        description="Take every release of the last DURATION that reached at least one "
                    "destination, and enqueue one release per source digest, with every tag "
                    "its releases carried, to the DEST arguments (or the set --to NAME of "
                    "fanout.toml); print the release ids. With --wait, wait for them all: "
                    f"{EXIT_CODES_HELP}",
    )
    parser.add_argument("destinations", metavar="DEST", nargs="*",
                        help="repository, optionally with a tag")
    parser.add_argument("--since", required=True, metavar="DURATION",
                        help="how far back: 30s, 90m, 2h, 7d, 1w (or 1h30m)")
    parser.add_argument("--to", metavar="NAME", help="the destination set NAME of fanout.toml")
    add_optional_flag(parser)
    parser.add_argument("--source-repo", metavar="REPO",
                        help="only the releases whose source is in this repository")
    add_config_flag(parser)
    add_broker_flag(parser)
    parser.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
                        help="allow plain HTTP to this registry when checking the sources "
                             "(loopback always may); also FANOUT_INSECURE_REGISTRIES")
    add_wait_flags(parser)
    parser.add_argument("--json", action="store_true",
                        help="print the releases as JSON (with --wait: their final state)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # The queue (Celery, Redis) and the engine load only when the command runs, not for --help.
    from . import api
    from .config import load_config, pick_destinations
    from .replay_plan import parse_duration

    check_wait_flags(args)
    seconds = parse_duration(args.since)  # a bad duration fails before anything is read
    env = os.environ
    config = load_config(args.config, env)
    if not args.destinations and args.to is None and not args.optional:
        # Never FANOUT_DESTINATIONS or the default set: a backfill goes where it is told.
        raise UsageError("no destinations to replay to: give DEST arguments or --to NAME")
    destinations, origin, optional = pick_destinations(args.destinations, env, config, args.to)
    ledger = api.connect_ledger(api.queue_settings(env, args.broker))
    ids = api.replay(
        seconds, destinations, optional=[*optional, *args.optional],
        source_repo=args.source_repo, env=env, broker_url=args.broker, ledger=ledger,
        insecure_registries=[*config.insecure_registries, *args.insecure_registry],
    )
    if not ids:
        print(f"nothing to replay: no release of the last {args.since} reached a destination"
              + (f" from {args.source_repo}" if args.source_repo else ""), file=sys.stderr)
    elif not args.json:
        print("\n".join(ids), flush=True)
        print(f"replaying {len(ids)} digest(s) to {len(destinations) + len(args.optional)} "
              f"destination(s) from {origin}", file=sys.stderr)
    if args.wait:
        releases = wait_all(ids, ledger, timeout=args.timeout, poll=args.poll,
                            on_poll=TransitionPrinter(sys.stderr))
    else:
        releases = [api.status(release_id, ledger=ledger) for release_id in ids]
    if args.json:
        # Always a list: how many digests a window holds is not known beforehand.
        print(json.dumps({"releases": [release_json(r) for r in releases]}, indent=2))
    elif args.wait:
        show(releases, as_json=False, out=sys.stdout)
    return api.exit_code(releases) if args.wait else api.EXIT_OK
