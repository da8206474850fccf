"""``fanout verify RELEASE… | --since 7d``: is what the ledger says landed still there?

``fanout --help`` builds this parser, so the engine, the queue and the ledger load when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from .common import UsageError, add_broker_flag, add_config_flag, add_transport_flags
from .status_cmd import add_wait_flags, check_wait_flags

if TYPE_CHECKING:
    from .verdicts import Report, Verdict

COLUMNS = ("RELEASE", "DESTINATION", "STATE", "DETAIL")
EXIT_HELP = ("Exit 0 when every landed destination is in place or superseded, 1 on any drift "
             "(tag moved, missing), 3 when some destination could not be checked (and no "
             "drift was found), 2 for usage errors (nothing contacted).")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "verify", help="check that what landed is still there; --repair sends it again",
        description="For every destination of each release that the ledger says succeeded, "
                    "ask the registry (HEADs only) whether the content is there and where "
                    "each tag points: in place, superseded (a newer release took the tag), "
                    "tag moved (by something else: the digest found is named), missing, or "
                    "unreachable. --repair sends what drifted again, as new attempts of the "
                    f"same release; a tag a newer release holds is never written back. {EXIT_HELP}"
                    " With --repair --wait: as status --wait over the repaired releases.",
    )
    parser.add_argument("releases", metavar="RELEASE", nargs="*",
                        help="release ids printed by enqueue (or use --since)")
    parser.add_argument("--since", metavar="DURATION",
                        help="every release of the last DURATION: 30s, 90m, 2h, 7d, 1w")
    parser.add_argument("--to", metavar="NAME",
                        help="only the destinations in the set NAME of fanout.toml")
    parser.add_argument("--source-repo", metavar="REPO",
                        help="only the releases whose source is in this repository")
    parser.add_argument("--repair", action="store_true",
                        help="send the drifted destinations again (new attempts, same release)")
    add_wait_flags(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON document")
    add_config_flag(parser)
    add_broker_flag(parser)
    add_transport_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .replay_plan import parse_duration
    from .verification import verify

    check_wait_flags(args)
    if args.wait and not args.repair:
        raise UsageError("--wait needs --repair (a verification does not wait for anything)")
    since = parse_duration(args.since) if args.since is not None else None
    env = os.environ
    config = load_config(args.config, env)
    only = list(config.destination_set(args.to) or ()) if args.to is not None else None
    report = verify(
        args.releases, since=since, only=only, source_repo=args.source_repo,
        repair=args.repair, env=env, broker_url=args.broker,
        insecure_registries=[*config.insecure_registries, *args.insecure_registry],
        ca_bundle=args.ca_bundle)
    _say_repairs(report, sys.stderr)
    if not (args.wait and report.repaired):
        _print(report, as_json=args.json, out=sys.stdout)
        return report.exit_code
    return _wait(args, report)


def _wait(args: argparse.Namespace, report: Report) -> int:
    """``--repair --wait``: the verification, then the repaired releases once final."""
    from . import api
    from .status_cmd import TransitionPrinter, release_json, wait_all
    from .table import print_releases

    if not args.json:
        _print(report, as_json=False, out=sys.stdout)
    ledger = api.connect_ledger(api.queue_settings(os.environ, args.broker))
    releases = wait_all(list(report.repaired), ledger, timeout=args.timeout, poll=args.poll,
                        on_poll=TransitionPrinter(sys.stderr))
    code = report.exit_code_after_repair(api.exit_code(releases))
    if args.json:
        document = {**report.to_dict(), "exit_code": code,
                    "releases": [release_json(r) for r in releases]}
        print(json.dumps(document, indent=2))
    else:
        print(file=sys.stdout)
        print_releases(releases, sys.stdout)
    return code


def _say_repairs(report: Report, out: TextIO) -> None:
    for release_id, names in report.repaired.items():
        print(f"{release_id}: sent again {len(names)} destination(s): {', '.join(names)}",
              file=out, flush=True)
    for release_id, why in report.held.items():
        print(f"{release_id}: not repaired: {why}", file=out, flush=True)


def _print(report: Report, *, as_json: bool, out: TextIO) -> None:
    if as_json:
        print(json.dumps(report.to_dict(), indent=2), file=out)
    else:
        print(render(report.verdicts, report.counts()), file=out)


def row(verdict: Verdict) -> tuple[str, ...]:
    name = f"{verdict.destination} (optional)" if verdict.optional else verdict.destination
    return (verdict.release, name, verdict.state, verdict.detail)


def render(verdicts: Sequence[Verdict], counts: dict[str, int]) -> str:
    """The table, then a summary line; no trailing newline."""
    lines = []
    if verdicts:
        table = [COLUMNS, *(row(v) for v in verdicts)]
        widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS) - 1)]
        for cells in table:
            padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=False)]
            lines.append("  ".join([*padded, cells[-1]]).rstrip())
        lines.append("")
    releases = len({v.release for v in verdicts})
    found = ", ".join(f"{n} {state}" for state, n in counts.items()) or "nothing to check"
    lines.append(f"{len(verdicts)} destination{'' if len(verdicts) == 1 else 's'} of "
                 f"{releases} release{'' if releases == 1 else 's'}: {found}")
    return "\n".join(lines)
