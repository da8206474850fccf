"""What the flags and arguments turn into: settings read at the edge (flags, then environment),
the source reference, each destination with its tags."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

from registry.credentials import CredentialStore, default_store
from registry.envconfig import copy_options_from_env, parse_size, transport_options_from_env
from registry.options import CopyOptions, TransportOptions
from registry.reference import Reference, Repository, parse_reference, validate_tag

from .common import UsageError


def transport_options(args: argparse.Namespace, env: Mapping[str, str]) -> TransportOptions:
    chunk_size = getattr(args, "chunk_size", None)
    chunk = parse_size(chunk_size, name="--chunk-size") if chunk_size else None
    return transport_options_from_env(
        env, insecure=args.insecure_registry, ca_bundle=args.ca_bundle, chunk_size=chunk,
    )


def copy_options(args: argparse.Namespace, env: Mapping[str, str]) -> CopyOptions:
    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, not {args.concurrency}")
    return copy_options_from_env(
        env, blob_concurrency=args.concurrency,
        referrers=False if args.no_referrers else None,
        referrer_types=tuple(args.referrers_type),
    )


def credentials(env: Mapping[str, str] | None = None) -> CredentialStore:
    return default_store(env if env is not None else os.environ)


def parse_source(text: str) -> Reference:
    """A source image: a tag (resolved later, once) or a digest. ``latest`` when it has neither."""
    return parse_reference(text.strip(), default_tag="latest")


def destination_references(texts: Sequence[str], *, why: str = "") -> list[Reference]:
    """Destinations as every command takes them: a repository, optionally with a tag, each
    once; ``why`` ends the message refusing a digest."""
    refs: list[Reference] = []
    seen: set[str] = set()
    for text in texts:
        ref = parse_reference(text.strip())
        if ref.digest:
            raise UsageError(f"destination {text!r} has a digest; give a repository, optionally "
                             f"with a tag{why}")
        key = str(ref.repository)
        if key in seen:
            raise UsageError(f"destination {key} is given twice")
        seen.add(key)
        refs.append(ref)
    return refs


def parse_destinations(
    texts: Sequence[str], source: Reference, extra_tags: Sequence[str],
) -> list[tuple[Repository, tuple[str, ...]]]:
    """Each destination with its tags: its own tag and every ``--tag``; else the source's tag."""
    for tag in extra_tags:
        validate_tag(tag)
    targets: list[tuple[Repository, tuple[str, ...]]] = []
    for ref in destination_references(texts, why=" (the digest is always the source's)"):
        tags = [ref.tag] if ref.tag else []
        tags += [t for t in extra_tags if t not in tags]
        if not tags and source.tag:
            tags = [source.tag]
        targets.append((ref.repository, tuple(tags)))
    return targets


def parse_targets(
    texts: Sequence[str], optional: Sequence[str], source: Reference, extra_tags: Sequence[str],
) -> tuple[list[tuple[Repository, tuple[str, ...]]], frozenset[str]]:
    """The destinations with their tags, and the repositories of those that are optional.

    An optional destination whose repository is among ``texts`` (a set of fanout.toml named
    with ``--to``, say) marks that one optional, its tags added; the others are added to it."""
    targets = parse_destinations(texts, source, extra_tags)
    index = {str(repo): i for i, (repo, _) in enumerate(targets)}
    marked: set[str] = set()
    for repo, tags in parse_destinations(optional, source, extra_tags):
        key = str(repo)
        marked.add(key)
        if key in index:
            known, known_tags = targets[index[key]]
            targets[index[key]] = (known, tuple(dict.fromkeys([*known_tags, *tags])))
        else:
            index[key] = len(targets)
            targets.append((repo, tags))
    return targets, frozenset(marked)
