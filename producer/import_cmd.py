"""``fanout import BUNDLE.tar --map SRC=DST``: push every image of a bundle to this side's
registries.

argparse only at module level (``fanout --help`` builds this parser): the archive reader and the
engine load when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .common import UsageError, add_registry_flags


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "import", help="push every image of a bundle (from fanout export) to registries here",
        description="Push every image of the OCI archive BUNDLE, by digest, with its referrers "
                    "and tags (written last), to the repository its source repository maps to "
                    "by the longest --map prefix. Exit 0 when every image is pushed, 1 when "
                    "any failed (a corrupt archive included), 2 for usage errors or a "
                    "repository no --map maps (then nothing is pushed).",
    )
    parser.add_argument("bundle", metavar="BUNDLE", help="the archive fanout export wrote")
    parser.add_argument("--map", dest="maps", action="append", default=[], required=True,
                        metavar="SOURCE_PREFIX=DEST_PREFIX",
                        help="push repositories under SOURCE_PREFIX (whole path components) "
                             "under DEST_PREFIX; repeatable, the longest match wins")
    parser.add_argument("--dry-run", action="store_true",
                        help="list what would go where; push nothing")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_registry_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from registry.envconfig import copy_options_from_env

    from .bundle_map import parse_maps
    from .bundle_output import import_json, print_import
    from .inputs import credentials, transport_options

    env = os.environ
    maps = parse_maps(args.maps)  # bad syntax fails before the archive is opened
    bundle = Path(args.bundle)
    if not bundle.is_file():
        # A path that names no file is the command's input gone wrong (exit 2), not an image
        # that failed; a file that is not a bundle is a corrupt archive (exit 1).
        raise UsageError(f"{bundle}: no such file" if not bundle.exists()
                         else f"{bundle}: not a file")
    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, not {args.concurrency}")
    # Referrers always travel: a bundle carries what was released, signatures included.
    options = copy_options_from_env(env, blob_concurrency=args.concurrency, referrers=True)
    from .bundles import import_bundle  # the engine and the archive reader, once args are good

    result = import_bundle(
        args.bundle, maps, dry_run=args.dry_run, credentials=credentials(env),
        transport=transport_options(args, env), options=options,
        live=sys.stderr.isatty() and not args.json and not args.dry_run)
    if args.json:
        print(import_json(result))
    else:
        print_import(result, sys.stdout)
    return 0 if result.ok else 1
