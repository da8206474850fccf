"""``fanout sync [NAME...]``: keep the mirrors of fanout.toml in sync, enqueueing only what
differs (``workers/mirror_sync.py`` does the work; ``docs/mirrors.md`` says how).

``fanout --help`` builds this parser, so the engine, the queue and the ledger load when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from .common import UsageError, add_broker_flag, add_config_flag, add_transport_flags
from .status_cmd import add_wait_flags, check_wait_flags

if TYPE_CHECKING:
    from workers.ledger import Ledger
    from workers.mirror_model import Mirror, MirrorPlan, MirrorRun

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNLISTED = 4
EXIT_HELP = ("Exit 0 when in sync (with --wait: every release it made succeeded), 1 when a "
             "release or a destination failed, 2 for usage or config errors, 3 when --wait "
             "timed out, 4 when a source could not be listed (a failed listing never counts "
             "as \"no tags\").")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "sync", help="keep mirrors ([[mirrors]] of fanout.toml) in sync",
        description="For each mirror: list the source's tags (every page), filter them, HEAD "
                    "each kept tag, compare with each destination, and enqueue only the "
                    "differences: a release per source digest, through the same queue, "
                    "ledger, retries and tag order as any release. With prune = true, tags "
                    "that left the filtered source are deleted at the destination (guarded: "
                    f"only the mirror's own tags, capped per run). {EXIT_HELP}",
    )
    parser.add_argument("names", metavar="NAME", nargs="*",
                        help="mirrors to sync (default: every mirror of fanout.toml)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (add, update, prune, in sync) per destination; "
                             "write and enqueue nothing")
    parser.add_argument("--prune-over-limit", action="store_true",
                        help="prune even when more tags than prune_limit would go")
    add_wait_flags(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON document")
    add_config_flag(parser)
    add_broker_flag(parser)
    add_transport_flags(parser)
    parser.set_defaults(run=run)


def pick(mirrors: Sequence[Mirror], names: Sequence[str], where: str) -> list[Mirror]:
    """The mirrors named (each once, in the order given), or every one; UsageError otherwise."""
    if not mirrors:
        raise UsageError(f"no [[mirrors]] in {where}")
    if not names:
        return list(mirrors)
    by_name = {mirror.name: mirror for mirror in mirrors}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise UsageError(f"no mirror {', '.join(map(repr, unknown))} in {where} "
                         f"(mirrors: {', '.join(sorted(by_name))})")
    return [by_name[name] for name in dict.fromkeys(names)]


def run(args: argparse.Namespace) -> int:
    from workers.mirror_model import MirrorBusy
    from workers.mirror_sync import sync_mirror

    from . import api
    from .config import load_config
    from .sync_output import sync_json_text, sync_text

    check_wait_flags(args)
    if args.wait and args.dry_run:
        raise UsageError("--wait does not go with --dry-run (a dry run enqueues nothing)")
    env: Mapping[str, str] = os.environ
    config = load_config(args.config, env)
    mirrors = pick(config.mirrors, args.names, str(config.path or "fanout.toml"))
    settings = api.queue_settings(env, args.broker)
    ledger = api.connect_ledger(settings)
    if not args.dry_run:
        api.check_broker(settings.broker_url, settings)
    insecure = [*config.insecure_registries, *args.insecure_registry]
    if args.ca_bundle:
        env = {**env, "FANOUT_CA_BUNDLE": args.ca_bundle}
    plans: list[MirrorPlan] = []
    runs: dict[str, MirrorRun] = {}
    busy: list[str] = []
    for mirror in mirrors:
        try:
            plan, done = sync_mirror(mirror, ledger=ledger, settings=settings, env=env,
                                     trigger="cli", dry_run=args.dry_run,
                                     prune_over_limit=args.prune_over_limit, insecure=insecure)
        except MirrorBusy as exc:
            print(f"fanout sync: {exc}; skipped", file=sys.stderr, flush=True)
            busy.append(mirror.name)
            continue
        plans.append(plan)
        runs[mirror.name] = done
        if not args.json and not args.wait:
            print(sync_text([plan], runs), flush=True)
    code = _code(runs.values(), busy)
    if args.wait and code == EXIT_OK:
        code = _wait(args, runs.values(), ledger)
    if args.json:
        print(sync_json_text(plans, runs))
    elif args.wait:
        print(sync_text(plans, runs))
    return code


def _code(runs: Iterable[MirrorRun], busy: Sequence[str]) -> int:
    done = list(runs)
    if any(not run.listed for run in done):
        return EXIT_UNLISTED  # a source could not be listed: nothing was planned for it
    if busy or any(not run.ok for run in done):
        return EXIT_FAILED
    return EXIT_OK


def _wait(args: argparse.Namespace, runs: Iterable[MirrorRun], ledger: Ledger) -> int:
    from . import api
    from .status_cmd import TransitionPrinter, wait_all

    ids = [release for run in runs for release in run.releases]
    releases = wait_all(ids, ledger, timeout=args.timeout, poll=args.poll,
                        on_poll=TransitionPrinter(sys.stderr))
    return api.exit_code(releases)
