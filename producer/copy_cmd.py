"""``fanout copy``: the engine in-process, every destination at once, each isolated.

``fanout --help`` builds this command's parser, so the module itself loads argparse only: the
engine (httpx, tenacity) loads when the command runs, and the progress display (rich) only when
it draws on a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from .common import (
    UsageError,
    add_optional_flag,
    add_referrer_flags,
    add_registry_flags,
    add_tag_flag,
)

if TYPE_CHECKING:
    from registry.options import CopyOptions, TransportOptions
    from registry.reference import Reference, Repository
    from registry.results import CopyResult, ProgressSink
    from registry.spool import Spool


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "copy", help="copy an image to one or more repositories now, in this process",
        description="Copy SOURCE, pinned by digest, to every DEST at once. Exit 0 when every "
                    "destination succeeded, 1 when any failed (an --optional one may fail), "
                    "2 for usage errors.",
    )
    parser.add_argument("source", metavar="SOURCE", help="image reference, by tag or digest")
    parser.add_argument("destinations", metavar="DEST", nargs="*",
                        help="repository, optionally with a tag")
    add_tag_flag(parser)
    add_optional_flag(parser)
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    add_registry_flags(parser)
    add_referrer_flags(parser)
    parser.set_defaults(run=run)


async def copy_all(
    source: Reference,
    targets: Sequence[tuple[Repository, Sequence[str]]],
    *,
    transport: TransportOptions,
    options: CopyOptions,
    env: Mapping[str, str],
    progress: ProgressSink | None = None,
) -> list[CopyResult]:
    """The Python entry point behind ``fanout copy``."""
    from registry.copy import Copier
    from registry.session import Registries

    from .inputs import credentials

    with _run_spool(len(targets), env) as spool:
        async with Registries(credentials(env), transport, spool=spool) as registries:
            copier = Copier(registries, options, progress=progress)
            try:
                return await copier.copy_many(source, targets)
            finally:
                if spool is not None:
                    await spool.aclose()


@contextlib.contextmanager
def _run_spool(destinations: int, env: Mapping[str, str]) -> Iterator[Spool | None]:
    """For several destinations, a spool of this run's own (removed at its end), so that each
    source blob is read once for all of them; for one, none: nothing to share."""
    import tempfile

    from registry.envconfig import spool_from_env
    from registry.spool import Spool

    _, budget = spool_from_env(env)
    if destinations < 2 or budget <= 0:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="fanout-spool-") as scratch:
        yield Spool(scratch, budget)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from .inputs import copy_options, parse_source, parse_targets, transport_options
    from .output import all_ok, print_results, results_json

    env = os.environ
    source = parse_source(args.source)
    targets, optional = parse_targets(args.destinations, args.optional, source, args.tag)
    if not targets:
        raise UsageError("no destinations given")
    transport = transport_options(args, env)
    options = copy_options(args, env)
    started = time.monotonic()
    live = sys.stderr.isatty() and not args.json
    if live:
        from .progress import LiveProgress

        with LiveProgress([str(repo) for repo, _ in targets]) as progress:
            results = asyncio.run(copy_all(source, targets, transport=transport,
                                           options=options, env=env, progress=progress))
    else:
        results = asyncio.run(copy_all(source, targets, transport=transport, options=options,
                                       env=env))
    seconds = time.monotonic() - started
    if args.json:
        print(results_json(results, seconds, optional))
    else:
        print_results(results, seconds, sys.stdout, optional)
    return 0 if all_ok(results, optional) else 1
