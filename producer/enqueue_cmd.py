"""``fanout enqueue``: pin the source, record a release, send one task per destination."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from .common import (
    UsageError,
    add_broker_flag,
    add_config_flag,
    add_optional_flag,
    add_referrer_flags,
    add_tag_flag,
)
from .status_cmd import (
    EXIT_CODES_HELP,
    TransitionPrinter,
    add_server_flag,
    add_wait_flags,
    check_wait_flags,
    show,
    wait_all,
)

if TYPE_CHECKING:
    from workers.records import Release

    from .server_client import ServerClient, ServerSettings


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "enqueue", help="queue a copy of an image to many repositories, for the workers",
        description="Pin SOURCE to its digest, record a release and queue one copy task per "
                    "destination; print the release id. SOURCE '-' reads references from "
                    "standard input, one per line, each its own release. Destinations: DEST "
                    "arguments, else --to NAME, else FANOUT_DESTINATIONS, else the default set "
                    "of fanout.toml. With --server (or FANOUT_SERVER): through `fanout serve`, "
                    "whose fanout.toml names the sets, with the token in FANOUT_TOKEN. "
                    f"With --wait: {EXIT_CODES_HELP}",
    )
    parser.add_argument("source", metavar="SOURCE",
                        help="image reference, by tag or digest; '-' reads them from stdin")
    parser.add_argument("destinations", metavar="DEST", nargs="*",
                        help="repository, optionally with a tag")
    add_tag_flag(parser)
    add_optional_flag(parser)
    parser.add_argument("--to", metavar="NAME", help="the destination set NAME of fanout.toml")
    add_config_flag(parser)
    add_broker_flag(parser)
    parser.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
                        help="allow plain HTTP to this registry when resolving the source "
                             "(loopback always may); also FANOUT_INSECURE_REGISTRIES")
    add_wait_flags(parser)
    parser.add_argument("--json", action="store_true",
                        help="print the releases as JSON (with --wait: their final state)")
    add_referrer_flags(parser)
    add_server_flag(parser)
    parser.set_defaults(run=run)


def read_sources(lines: Iterable[str]) -> list[str]:
    """References from a stream, one per line; blank lines and ``#`` comments skipped.

    Extra words on a line are an error rather than guessed at: ``ko build`` prints one
    reference per line, and anything else is a pipe carrying the wrong output.
    """
    sources = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if len(text.split()) > 1:
            raise UsageError(f"stdin line {number}: expected one image reference, got {text!r}")
        sources.append(text)
    return sources


def run(args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    from .server_client import server_settings

    check_wait_flags(args)
    env = os.environ
    server = server_settings(args.server, env)
    if args.source == "-":
        sources = read_sources(stdin or sys.stdin)
        if not sources:
            raise UsageError("no image references on standard input")
    else:
        sources = [args.source]
    _refuse_layouts([*sources, *args.destinations, *args.optional])
    if server is not None:
        return run_on_server(args, sources, server, env)
    # The queue (Celery, Redis) and the engine load only when the command runs, not for --help.
    from . import api
    from .config import load_config, pick_destinations

    config = load_config(args.config, env)
    destinations, origin, optional = pick_destinations(args.destinations, env, config, args.to)
    if not destinations and not args.optional:
        raise UsageError("no destinations: give DEST arguments, --to NAME, "
                         "FANOUT_DESTINATIONS (comma-separated) or a default set in fanout.toml")
    ids = api.enqueue(
        sources, destinations, tags=args.tag, optional=[*optional, *args.optional],
        referrers=not args.no_referrers,
        referrer_types=args.referrers_type, env=env, broker_url=args.broker,
        insecure_registries=[*config.insecure_registries, *args.insecure_registry],
    )
    ledger = api.connect_ledger(api.queue_settings(env, args.broker))
    if not args.wait:
        if args.json:
            releases = [api.status(release_id, ledger=ledger) for release_id in ids]
            print(json.dumps({"releases": [r.to_dict() for r in releases]}, indent=2))
        else:
            print("\n".join(ids))
            print(f"enqueued {len(ids)} release(s) to {len(destinations)} destination(s) "
                  f"from {origin}{_plus_optional(args.optional)}; follow with: "
                  "fanout status RELEASE --wait", file=sys.stderr)
        return api.EXIT_OK
    if not args.json:
        print("\n".join(ids), flush=True)
    releases = wait_all(ids, ledger, timeout=args.timeout, poll=args.poll,
                        on_poll=TransitionPrinter(sys.stderr))
    return show(releases, as_json=args.json, out=sys.stdout)


def _plus_optional(optional: list[str]) -> str:
    return f" and {len(optional)} optional" if optional else ""


def _refuse_layouts(texts: Sequence[str]) -> None:
    """A worker has no business writing to (or reading) this machine's files."""
    for text in texts:
        if text.startswith(("oci:", "oci-archive:")):
            raise UsageError(f"{text}: fanout enqueue copies between registries; copy to or "
                             "from an OCI layout or archive with fanout copy")


def run_on_server(args: argparse.Namespace, sources: Sequence[str], server: ServerSettings,
                  env: Mapping[str, str]) -> int:
    """``enqueue --server``: one ``POST /v1/releases`` per source, then the same output and
    exit codes as through the broker. The server's fanout.toml names the sets, not ours."""
    from registry.reference import parse_reference

    from . import server_client

    server_client.refuse_broker_flags({
        "--config": args.config, "--broker": args.broker,
        "--insecure-registry": args.insecure_registry, "--referrers-type": args.referrers_type})
    body, origin = request_body(args, env)
    for source in sources:  # a bad reference among many: nothing sent
        parse_reference(source, default_tag="latest")
    with server_client.ServerClient(server) as client:
        releases = _create_each(client, sources, body)
        ids = [release.id for release in releases]
        if not args.wait:
            if args.json:
                print(json.dumps({"releases": [r.to_dict() for r in releases]}, indent=2))
            else:
                print("\n".join(ids))
                flag = f" --server {server.url}" if server.from_flag else ""
                print(f"enqueued {len(ids)} release(s) to {_count(releases[0])} from {origin}; "
                      f"follow with: fanout status RELEASE --wait{flag}", file=sys.stderr)
            return 0
        if not args.json:
            print("\n".join(ids), flush=True)
        final = server_client.wait_all(client, ids, timeout=args.timeout, poll=args.poll,
                                       on_poll=TransitionPrinter(sys.stderr))
    return show(final, as_json=args.json, out=sys.stdout)


def request_body(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    """The fields of ``POST /v1/releases`` but the source, and where the destinations are from."""
    from registry.envconfig import split_list

    body: dict[str, Any] = {"tags": list(args.tag), "optional": list(args.optional),
                            "referrers": not args.no_referrers}
    if args.to is not None:
        if args.destinations:
            raise UsageError("give destinations as arguments or with --to, not both")
        return {**body, "to": args.to}, f"set {args.to!r}"
    from_env = split_list(env.get("FANOUT_DESTINATIONS", ""))
    if args.destinations or from_env:
        origin = "arguments" if args.destinations else "FANOUT_DESTINATIONS"
        return {**body, "destinations": list(args.destinations or from_env)}, origin
    return body, "the server's default set"


def _create_each(client: ServerClient, sources: Sequence[str],
                 body: Mapping[str, Any]) -> list[Release]:
    from .server_client import ServerError

    releases: list[Release] = []
    for source in sources:
        try:
            releases.append(client.create_release({"source": source, **body}))
        except ServerError as exc:
            if not releases:
                raise
            # Each POST is its own release: those before the refusal stand, and are named.
            print("\n".join(r.id for r in releases), flush=True)
            raise ServerError(f"{source}: {exc} ({len(releases)} release(s) enqueued before "
                              "it, printed above)", status=exc.status, detail=exc.detail) from None
    return releases


def _count(release: Release) -> str:
    optional = sum(1 for record in release.destinations.values() if record.optional)
    required = len(release.destinations) - optional
    return (f"{required} destination(s)" + (f" and {optional} optional" if optional else ""))
