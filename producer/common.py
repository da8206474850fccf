"""Pieces every subcommand shares: registry flags, reading settings at the edge, tag rules."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

from registry.credentials import CredentialStore, default_store
from registry.envconfig import copy_options_from_env, parse_size, transport_options_from_env
from registry.options import CopyOptions, TransportOptions
from registry.reference import Reference, Repository, parse_reference, validate_tag


class UsageError(Exception):
    """Bad input from the user: printed as is, exit status 2."""


def add_tag_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tag", "-t", action="append", default=[], metavar="T",
                        help="tag every destination with T (repeatable); default: the "
                             "destination's own tag, else the source's")


def add_optional_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--optional", action="append", default=[], metavar="DEST",
                        help="copy to DEST too, but let it fail without failing the "
                             "release (repeatable); a DEST already among the destinations is "
                             "only marked optional")


def add_transport_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """How to reach registries: the flags every command that talks to one takes."""
    group = parser.add_argument_group("registry access")
    group.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
                       help="allow plain HTTP to this registry (loopback always may); "
                            "also FANOUT_INSECURE_REGISTRIES")
    group.add_argument("--ca-bundle", metavar="FILE",
                       help="trust this CA bundle for TLS (also FANOUT_CA_BUNDLE)")
    return group


def add_registry_flags(parser: argparse.ArgumentParser) -> None:
    group = add_transport_flags(parser)
    group.add_argument("--chunk-size", metavar="SIZE",
                       help="upload blobs in chunks of SIZE (e.g. 16M) instead of one PUT")
    group.add_argument("--concurrency", type=int, metavar="N",
                       help="blobs in flight per destination (default 4)")


def add_referrer_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("signatures, SBOMs and attestations")
    group.add_argument("--no-referrers", action="store_true",
                       help="do not copy the image's referrers and cosign tags")
    group.add_argument("--referrers-type", action="append", default=[], metavar="TYPE",
                       help="copy only referrers of this artifact type (repeatable)")


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


def parse_destinations(
    texts: Sequence[str], source: Reference, extra_tags: Sequence[str],
) -> list[tuple[Repository, tuple[str, ...]]]:
    """Each destination with its tags: its own tag and every ``--tag``; else the source's tag."""
    for tag in extra_tags:
        validate_tag(tag)
    targets: list[tuple[Repository, tuple[str, ...]]] = []
    seen: set[str] = set()
    for text in texts:
        ref = parse_reference(text.strip())
        if ref.digest:
            raise UsageError(f"destination {text!r} has a digest; give a repository, optionally "
                             "with a tag (the digest is always the source's)")
        tags = [ref.tag] if ref.tag else []
        tags += [t for t in extra_tags if t not in tags]
        if not tags and source.tag:
            tags = [source.tag]
        key = str(ref.repository)
        if key in seen:
            raise UsageError(f"destination {key} is given twice")
        seen.add(key)
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
