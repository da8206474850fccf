"""A Redis that can fail over: a primary, a replica and three sentinels, on loopback ports.

Every instance asks for a password (``requirepass``; the replica and the sentinels use it to
reach the primary), and the sentinels may ask for their own. Configuration goes in files, not
``argv``, so no password is in the process list. The sentinels are tuned to notice a dead
primary within a second and to promote the replica a few seconds later::

    cluster = SentinelCluster(tmp_path, password="...", sentinel_password="...").start()
    env = {"FANOUT_BROKER_URL": cluster.url, "FANOUT_SENTINEL_MASTER": cluster.master, ...}
    cluster.kill_primary()
    cluster.wait_for_failover()          # every sentinel names the former replica
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import redis

from tests.support.ports import free_port
from tests.support.queue import Process, wait_until

MASTER = "fanout-test"
QUORUM = 2


class SentinelCluster:
    def __init__(self, root: Path, *, password: str, sentinel_password: str | None = None,
                 sentinels: int = 3, master: str = MASTER) -> None:
        self.root = root
        self.password = password
        self.sentinel_password = sentinel_password
        self.master = master
        self.primary_port = free_port()
        self.replica_port = free_port()
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinel_ids = [secrets.token_hex(20) for _ in range(sentinels)]
        self.processes: dict[str, Process] = {}

    @property
    def url(self) -> str:
        """The broker and ledger URL: every sentinel, the primary's password on the first."""
        first, *others = self.sentinel_ports
        return ";".join([f"sentinel://:{self.password}@127.0.0.1:{first}/0",
                         *(f"sentinel://127.0.0.1:{port}" for port in others)])

    def start(self) -> SentinelCluster:
        self._redis("primary", self.primary_port)
        self._redis("replica", self.replica_port, f"replicaof 127.0.0.1 {self.primary_port}")
        wait_until(lambda: self._info(self.replica_port).get("master_link_status") == "up",
                   15, "the replica in sync", lambda: self.processes["replica"].log()[-2000:])
        for i, port in enumerate(self.sentinel_ports):
            self._sentinel(i, port)
        # A sentinel can only vote once it knows the others and the replica it would promote:
        # told in its config, rather than learnt from hello messages and INFO over seconds.
        wait_until(self._sentinels_ready, 20, "every sentinel seeing the others and the replica",
                   self.logs)
        return self

    def master_port(self, sentinel_port: int | None = None) -> int | None:
        """The primary's port as a sentinel names it now (None while it names none)."""
        client = self._sentinel_client(sentinel_port or self.sentinel_ports[0])
        try:
            address = client.sentinel_get_master_addr_by_name(self.master)
        except redis.RedisError:
            return None
        finally:
            client.close()
        return int(address[1]) if address else None

    def kill_primary(self) -> None:
        """SIGKILL the primary: a crash, not a handover."""
        self.processes["primary"].kill()

    def wait_for_failover(self, timeout: float = 30) -> None:
        """Every sentinel names the former replica, and it accepts writes."""
        def switched() -> bool:
            if any(self.master_port(p) != self.replica_port for p in self.sentinel_ports):
                return False
            return self._info(self.replica_port).get("role") == "master"

        wait_until(switched, timeout, "the sentinels promoting the replica", self.logs)

    def stop(self) -> None:
        for process in reversed(self.processes.values()):
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{p.log()[-1500:]}" for name, p in self.processes.items())

    # -- processes ----------------------------------------------------------------------------

    def _redis(self, name: str, port: int, *extra: str) -> None:
        data = self.root / name
        data.mkdir(parents=True, exist_ok=True)
        conf = self._conf(name, [
            f"port {port}", "bind 127.0.0.1", f"dir {data}", 'save ""', "appendonly yes",
            "appendfsync always", f"requirepass {self.password}",
            f"masterauth {self.password}",
            # Sync a replica at once, not after waiting 5 s for others to share the transfer.
            "repl-diskless-sync-delay 0", *extra])
        self.processes[name] = Process(name, ["redis-server", str(conf)], data / "redis.log",
                                       dict(os.environ)).start()
        wait_until(lambda: self._ping(name, port), 10, f"{name} answering PING")

    def _sentinel(self, index: int, port: int) -> None:
        name = f"sentinel{index}"
        data = self.root / name
        data.mkdir(parents=True, exist_ok=True)
        own = [f"requirepass {self.sentinel_password}"] if self.sentinel_password else []
        # The config file must be writable: sentinels record what they learn in it.
        conf = self._conf(name, [
            f"port {port}", "bind 127.0.0.1", f"dir {data}", *own,
            f"sentinel monitor {self.master} 127.0.0.1 {self.primary_port} {QUORUM}",
            f"sentinel down-after-milliseconds {self.master} 1000",
            f"sentinel failover-timeout {self.master} 5000",
            f"sentinel auth-pass {self.master} {self.password}",
            f"sentinel myid {self.sentinel_ids[index]}",
            f"sentinel known-replica {self.master} 127.0.0.1 {self.replica_port}",
            *(f"sentinel known-sentinel {self.master} 127.0.0.1 {other} {self.sentinel_ids[i]}"
              for i, other in enumerate(self.sentinel_ports) if i != index)])
        self.processes[name] = Process(name, ["redis-server", str(conf), "--sentinel"],
                                       data / "sentinel.log", dict(os.environ)).start()

    def _conf(self, name: str, lines: list[str]) -> Path:
        path = self.root / name / f"{name}.conf"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        return path

    # -- probes -------------------------------------------------------------------------------

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            client = self._sentinel_client(port)
            try:
                state = client.sentinel_master(self.master)
            except redis.RedisError:
                return False
            finally:
                client.close()
            others = int(state.get("num-other-sentinels", 0))
            replicas = int(state.get("num-slaves", 0))
            if others < len(self.sentinel_ports) - 1 or replicas < 1:
                return False
        return True

    def _sentinel_client(self, port: int) -> redis.Redis[bytes]:
        return redis.Redis(port=port, password=self.sentinel_password, socket_timeout=2,
                           socket_connect_timeout=2)

    def _ping(self, name: str, port: int) -> bool:
        assert self.processes[name].running, self.processes[name].log()
        client = redis.Redis(port=port, password=self.password, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.BusyLoadingError):
            return False
        finally:
            client.close()

    def _info(self, port: int) -> dict[str, object]:
        client = redis.Redis(port=port, password=self.password, socket_connect_timeout=1,
                             socket_timeout=2, decode_responses=True)
        try:
            return dict(client.info("replication"))
        except redis.RedisError:
            return {}
        finally:
            client.close()
