"""``fanout metrics``: a Prometheus exporter reading the counters, queues and ledger in Redis.

Every scrape reads Redis afresh (``workers/metrics.py``), so exporters on any number of hosts
report the same numbers, and one that restarts loses nothing. Mirrors' metrics
(``workers/mirror_metrics.py``) are those of the config file's ``[[mirrors]]`` when there is a
file (``--config``, ``FANOUT_CONFIG``, ``./fanout.toml``), else of every mirror Redis recorded
a run of within its retention.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from types import FrameType

from .common import UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9808


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "metrics", help="serve Prometheus metrics (copies, bytes, durations, queues, releases)",
        description="Serve /metrics for Prometheus: copies by registry and outcome, bytes, "
                    "copy durations, lost workers, queue depths, releases by state and "
                    "bandwidth caps (rate and time waited per host), read "
                    "from Redis (FANOUT_LEDGER_URL, FANOUT_BROKER_URL) at each scrape. Runs "
                    "until interrupted; exit 2 when the port cannot be listened on.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}; 0.0.0.0: all)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT,
                        help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument("--config", metavar="FILE",
                        help="fanout.toml whose [[mirrors]] are reported (default: "
                             "FANOUT_CONFIG, else ./fanout.toml if there is one; without a "
                             "file, every mirror with a recent run in Redis)")
    parser.set_defaults(run=run)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return port


def run(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry, start_http_server
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from workers.bandwidth_metrics import BandwidthCollector
    from workers.connections import is_redis_url, redact, redis_client
    from workers.metrics import LedgerCollector
    from workers.mirror_metrics import MirrorCollector
    from workers.settings import WorkerSettings

    from .config import load_config

    settings = WorkerSettings.from_env(os.environ)
    config = load_config(args.config, os.environ)
    # With a fanout.toml, its mirrors (one removed from it stops being reported); without
    # one, every mirror that ran lately, as Redis has them.
    names = [m.name for m in config.mirrors] if config.path is not None else None
    # A scrape has its own deadline (10 s by default): one try, and "down" if Redis does not
    # answer, rather than backing off past it.
    options = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0,
               "retry": Retry(NoBackoff(), 1)}
    ledger = redis_client(settings.ledger_url, settings.sentinel, **options)
    broker = (redis_client(settings.broker_url, settings.sentinel, **options)
              if is_redis_url(settings.broker_url) else None)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, broker, retention=settings.retention))
    registry.register(MirrorCollector(ledger, names))
    registry.register(BandwidthCollector(ledger))
    try:
        server, _ = start_http_server(args.port, addr=args.host, registry=registry)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {args.port} is already in use on {args.host}") from None
        raise UsageError(f"cannot listen on {args.host}:{args.port}: "
                         f"{exc.strerror or exc}") from None
    print(f"fanout metrics: serving http://{args.host}:{args.port}/metrics "
          f"(ledger {redact(settings.ledger_url)}, broker {redact(settings.broker_url)}"
          f"{'' if broker is not None else ': not Redis, no queue depths'})",
          file=sys.stderr, flush=True)
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    try:
        while not stop.wait(3600):
            pass
    finally:
        server.shutdown()
        server.server_close()
    return 0
