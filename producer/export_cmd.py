"""``fanout export BUNDLE.tar --since 7d``: the releases of a window, in one OCI archive.

argparse only at module level (``fanout --help`` builds this parser): the ledger, the engine
and the archive writer load when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .common import UsageError, add_broker_flag, add_config_flag, add_transport_flags


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "export", help="write the images released recently into one OCI archive (a bundle)",
        description="Take every release of the last DURATION that reached at least one "
                    "destination (or one of the set --to NAME, or of --source-repo) and write "
                    "each one's image, by digest, with its referrers and tags, into the OCI "
                    "archive BUNDLE (never half-written). The same releases and --base make "
                    "the same bytes. Exit 0 when written, 1 when an image could not be read "
                    "(then nothing is written), 2 for usage errors.",
    )
    parser.add_argument("bundle", metavar="BUNDLE", help="the archive to write (a .tar file)")
    parser.add_argument("--since", required=True, metavar="DURATION",
                        help="how far back: 30s, 90m, 2h, 7d, 1w (or 1h30m)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--to", metavar="NAME",
                       help="only releases that reached a destination of the set NAME of "
                            "fanout.toml")
    which.add_argument("--source-repo", metavar="REPO",
                       help="only the releases whose source is in this repository")
    parser.add_argument("--base", metavar="PREVIOUS",
                        help="leave out the blobs the bundle PREVIOUS carried (the far side "
                             "holds them already): an incremental bundle")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_config_flag(parser)
    add_broker_flag(parser)
    add_transport_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from registry.envconfig import copy_options_from_env

    from . import api
    from .bundle_base import read_base
    from .bundle_output import export_json, print_export
    from .bundle_plan import plan_bundle
    from .bundle_results import BundleResult
    from .bundles import export_bundle
    from .config import load_config
    from .inputs import credentials, transport_options
    from .replay_plan import parse_duration

    env = os.environ
    seconds = parse_duration(args.since)  # a bad duration fails before anything is read
    destinations = None
    if args.to is not None:
        destinations = load_config(args.config, env).destination_set(args.to) or ()
    if Path(args.bundle).is_dir():
        raise UsageError(f"{args.bundle} is a directory; give the archive's file name")
    if Path(args.bundle).exists():
        # A bundle is written whole: added to an old archive, it would carry the old images too.
        raise UsageError(f"{args.bundle} exists; a bundle is always a new file")
    base = read_base(args.base) if args.base else None
    transport = transport_options(args, env)
    ledger = api.connect_ledger(api.queue_settings(env, args.broker))
    images = plan_bundle(ledger, time.time() - seconds, source_repo=args.source_repo,
                         destinations=destinations)
    if not images:
        print(f"nothing to export: no release of the last {args.since} reached a destination"
              + (f" of set {args.to!r}" if args.to else "")
              + (f" from {args.source_repo}" if args.source_repo else ""), file=sys.stderr)
        if args.json:  # a script still gets its document: no images, no file (sha256 null)
            print(export_json(BundleResult("export", args.bundle, (), 0.0)))
        return 0
    # Referrers always travel: a bundle carries what was released, signatures included.
    options = copy_options_from_env(env, referrers=True)
    try:
        result = export_bundle(images, args.bundle, base=base, credentials=credentials(env),
                               transport=transport, options=options,
                               live=sys.stderr.isatty() and not args.json)
    except OSError as exc:  # the disk's refusal (no space, read-only): nothing was written
        from registry.errors import LayoutDiskError

        print(f"fanout export: {LayoutDiskError.of(args.bundle, 'write', exc)}",
              file=sys.stderr)
        return 1
    if args.json:
        print(export_json(result))
    else:
        print_export(result, sys.stdout)
    return 0 if result.ok else 1

