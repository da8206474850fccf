"""``fanout copy``: the engine in-process, every destination at once, each isolated.

``fanout --help`` builds this command's parser, so the module itself loads argparse only: the
engine (httpx, tenacity) loads when the command runs, and the progress display (rich) only when
it draws on a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from .common import (
    UsageError,
    add_optional_flag,
    add_referrer_flags,
    add_registry_flags,
    add_tag_flag,
)

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from registry.layout import Layout
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
    parser.add_argument("source", metavar="SOURCE",
                        help="image reference, by tag or digest; or oci:DIR[:REF], "
                             "oci-archive:FILE[:REF]")
    parser.add_argument("destinations", metavar="DEST", nargs="*",
                        help="repository, optionally with a tag; or oci:DIR[:REF], "
                             "oci-archive:FILE[:REF] (REF is the tag there)")
    add_tag_flag(parser)
    add_optional_flag(parser)
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    add_registry_flags(parser)
    add_referrer_flags(parser)
    # Nothing is left open once run returns: the process may skip the interpreter's teardown.
    parser.set_defaults(run=run, quick_exit=True)


async def copy_all(
    source: Reference,
    targets: Sequence[tuple[Repository, Sequence[str]]],
    *,
    transport: TransportOptions,
    options: CopyOptions,
    env: Mapping[str, str],
    progress: ProgressSink | None = None,
    local: Mapping[str, httpx.AsyncBaseTransport] | None = None,
) -> list[CopyResult]:
    """The Python entry point behind ``fanout copy``; ``local``: hosts served in-process
    (OCI layouts, ``registry.layout``)."""
    from registry.copy import Copier
    from registry.envconfig import bandwidth_from_env
    from registry.session import Registries
    from registry.throttle import LocalThrottle

    from .inputs import credentials

    caps = bandwidth_from_env(env)  # FANOUT_BANDWIDTH: kept by this process alone
    throttle = LocalThrottle(caps) if caps else None
    with _run_spool(len(targets), env) as spool:
        async with Registries(credentials(env), transport, spool=spool, local=local,
                              throttle=throttle) as registries:
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

    from registry.errors import NotALayout

    from .inputs import copy_options, transport_options
    from .output import all_ok, print_results, results_json

    env = os.environ
    layouts = _Layouts()
    try:
        try:
            source, targets, optional = layouts.plan(args)
        except NotALayout as exc:
            raise UsageError(str(exc)) from None
        if not targets:
            raise UsageError("no destinations given")
        transport = transport_options(args, env)
        options = copy_options(args, env)
        started = time.monotonic()
        live = sys.stderr.isatty() and not args.json

        async def copy(progress: ProgressSink | None) -> list[CopyResult]:
            results = await copy_all(source, targets, transport=transport, options=options,
                                     env=env, progress=progress, local=layouts.local())
            return await layouts.finish(results)

        if live:
            from .progress import LiveProgress

            with LiveProgress([layouts.name(str(repo)) for repo, _ in targets]) as progress:
                results = asyncio.run(copy(progress))
        else:
            results = asyncio.run(copy(None))
    finally:
        layouts.close()
    results = layouts.renamed(results)
    optional = frozenset(layouts.name(text) for text in optional)
    seconds = time.monotonic() - started
    if args.json:
        print(results_json(results, seconds, optional))
    else:
        print_results(results, seconds, sys.stdout, optional)
    return 0 if all_ok(results, optional) else 1


def _opened(text: str, open_layout: Callable[[], Layout]) -> Layout:
    """A layout opened as the command line names it; the disk's refusal (no such directory,
    permissions) is a usage error naming it, before anything is copied."""
    try:
        return open_layout()
    except OSError as exc:
        raise UsageError(f"{text}: {exc.strerror or exc}") from None


class _Layouts:
    """The OCI layouts and archives of one ``fanout copy``: opened before anything is copied
    (a bad one is a usage error), committed for each destination that succeeded, discarded
    for one that failed, and named in the results as the user wrote them."""

    def __init__(self) -> None:
        self.open: list[tuple[Layout, str]] = []
        self._names: dict[str, str] = {}
        self._writing: dict[tuple[str, Path], Layout] = {}

    def plan(self, args: argparse.Namespace) -> tuple[
            Reference, list[tuple[Repository, tuple[str, ...]]], frozenset[str]]:
        from registry.layout_ref import parse_place

        from .inputs import parse_source, parse_targets

        place = parse_place(args.source)
        if place is None:
            source = parse_source(args.source)
        else:
            from registry.layout import Layout  # only for a layout: tarfile, the store, ...

            layout = _opened(args.source, lambda: Layout(place.path, archive=place.archive,
                                                         write=False))
            self.open.append((layout, args.source))
            names = layout.state.ref_names()
            ref = place.ref
            if ref is None:
                if len(layout.entries()) != 1:
                    raise UsageError(f"{args.source}: give :REF, one of {', '.join(names)}"
                                     if names else f"{args.source}: the layout is empty")
                only = layout.entries()[0]
                ref = only.ref_name or only.digest
            elif ref not in names:
                raise UsageError(f"{args.source}: no image named {ref!r} in its index.json"
                                 f" (it has {', '.join(names) or 'none'})")
            source = layout.reference(ref=ref)
            self._names[str(source)] = args.source
        texts = [self._destination(text) for text in args.destinations]
        optional = [self._destination(text) for text in args.optional]
        targets, marked = parse_targets(texts, optional, source, args.tag)
        return source, targets, marked

    def _destination(self, text: str) -> str:
        """A DEST (or ``--optional`` DEST) as the copy engine names it: a layout's synthetic
        reference, the layout opened for writing once however often it is named."""
        from registry.layout_ref import parse_place

        place = parse_place(text)
        if place is None:
            return text
        from registry.layout import Layout

        key = (place.kind, place.path.resolve())
        layout = self._writing.get(key)
        if layout is None:
            layout = self._writing[key] = _opened(
                text, lambda: Layout(place.path, archive=place.archive, write=True))
            self.open.append((layout, text))
            self._names[str(layout.reference().repository)] = text
        return str(layout.reference(ref=place.ref))

    def local(self) -> dict[str, httpx.AsyncBaseTransport]:
        return {layout.host: layout.transport for layout, _ in self.open}

    def name(self, text: str) -> str:
        return self._names.get(text, text)

    async def finish(self, results: Sequence[CopyResult]) -> list[CopyResult]:
        """Commit each layout destination whose copy succeeded; discard the others. A commit
        the disk refuses (no space for the archive) fails that destination, naming why."""
        from registry.errors import LayoutDiskError

        ok = {r.destination for r in results if r.error is None}
        refused: dict[str, LayoutDiskError] = {}
        for layout, text in self.open:
            repository = str(layout.reference().repository)
            if layout.write and repository in ok:
                try:
                    await layout.commit()
                except OSError as exc:
                    refused[repository] = LayoutDiskError.of(text, "write", exc)
            else:
                await layout.discard()
        return [dataclasses.replace(r, error=refused[r.destination])
                if r.destination in refused else r for r in results]

    def close(self) -> None:
        import asyncio

        for layout, _ in self.open:
            asyncio.run(layout.discard())  # a no-op once committed

    def renamed(self, results: Sequence[CopyResult]) -> list[CopyResult]:
        return [dataclasses.replace(r, source=self.name(r.source),
                                    destination=self.name(r.destination)) for r in results]
