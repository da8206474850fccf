"""``fanout serve``: the HTTP front door (:mod:`service`), for CI runners and registries that
must not reach the broker."""

from __future__ import annotations

import argparse
import os

from .common import UsageError, add_config_flag


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "serve", help="serve the HTTP API, registry webhooks and the release page",
        description="Serve the HTTP API (POST /v1/releases, …), registry webhooks "
                    "(/v1/hooks/KIND) and the release page (/). Tokens, rules and destination "
                    "sets come from the config file; Redis from FANOUT_BROKER_URL and "
                    "FANOUT_LEDGER_URL, as for enqueue. See docs/api.md.",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    add_config_flag(parser)
    parser.add_argument("--request-timeout", type=float, metavar="S",
                        help="seconds a request's headers, then its body, may take to arrive "
                             "(default: $FANOUT_SERVE_REQUEST_TIMEOUT, else 10)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # The web stack loads only for this command: no other command pays for it.
    from registry.envconfig import env_number
    from service.config import load_serve_config
    from service.server import serve

    env = dict(os.environ)
    config = load_serve_config(args.config, env)
    timeout = args.request_timeout
    if timeout is None:
        timeout = env_number(env, "FANOUT_SERVE_REQUEST_TIMEOUT", 10.0, minimum=0.1)
    if timeout <= 0:
        raise UsageError(f"--request-timeout must be positive, not {timeout:g}")
    serve(config, env, host=args.host, port=args.port, request_timeout=timeout)
    return 0
