"""What every subcommand's parser shares: the usage error and the flags several take.

argparse only: ``fanout --help`` builds every subcommand's parser from these, so nothing here may
load the engine (httpx, tenacity) or the queue (Celery, Redis). What the flags turn into is
:mod:`producer.inputs`'s.
"""

from __future__ import annotations

import argparse

# Defined in workers/errors.py (a leaf of exceptions only), so that the verify core the workers
# run raises the very classes every caller here catches.
from workers.errors import ReleaseNotFound as ReleaseNotFound
from workers.errors import UsageError as UsageError


def add_tag_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tag", "-t", action="append", default=[], metavar="T",
                        help="tag every destination with T (repeatable); default: the "
                             "destination's own tag, else the source's")


def add_optional_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--optional", action="append", default=[], metavar="DEST",
                        help="copy to DEST too, but let it fail without failing the "
                             "release (repeatable); a DEST already among the destinations is "
                             "only marked optional")


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="config file (default: $FANOUT_CONFIG, else ./fanout.toml)")


def add_broker_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", metavar="URL",
                        help="broker URL (default: $FANOUT_BROKER_URL, else "
                             "redis://localhost:6379/0)")


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
                       help="blob transfers in flight per destination (default 8)")


def add_referrer_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("signatures, SBOMs and attestations")
    group.add_argument("--no-referrers", action="store_true",
                       help="do not copy the image's referrers and cosign tags")
    group.add_argument("--referrers-type", action="append", default=[], metavar="TYPE",
                       help="copy only referrers of this artifact type (repeatable)")
