"""Start a throwaway Redis Cluster on free ports (tests, the scale-out and failover benchmarks).

Each node is a :class:`LocalRedis` with ``--cluster-enabled yes``; ``redis-cli --cluster create``
joins them, with no replicas by default or ``replicas`` replicas per master. With replicas,
:meth:`LocalCluster.kill_master_of` kills the master serving a key (``kill -9``) and
:meth:`LocalCluster.wait_failover` waits until a replica took over its slots. Never touches a
Redis it did not start.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass

import redis

from bench.harness.localredis import LocalRedis, free_port

SLOTS = 16384


def _free_cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too."""
    import socket

    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@dataclass(frozen=True)
class Killed:
    """A master killed by :meth:`LocalCluster.kill_master_of`: its port and the slot asked about."""

    port: int
    slot: int
    at: float  # time.monotonic() of the kill


class LocalCluster:
    """``masters`` masters (each with ``replicas`` replicas) joined into one cluster; a context manager."""

    def __init__(self, masters: int = 3, args: list[str] | None = None, *, replicas: int = 0,
                 node_timeout_ms: int = 5000) -> None:
        self.masters = masters
        self.replicas = replicas
        self.nodes = [
            LocalRedis(port=_free_cluster_port(),
                       args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                             "--cluster-node-timeout", str(node_timeout_ms), *(args or [])])
            for _ in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL of the first node (the client discovers the others)."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, timeout: float = 30.0) -> LocalCluster:
        """Start every node, create the cluster and wait until all slots are served (and replicas linked)."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli not found on PATH (apt-get install redis-tools)")
        for node in self.nodes:
            node.start()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        out = subprocess.run([cli, "--cluster", "create", *addrs, "--cluster-replicas", str(self.replicas),
                              "--cluster-yes"], capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout[-1000:]}{out.stderr[-1000:]}")
        try:
            self._wait(lambda: self._healthy() and self._replicas_linked(), timeout,
                       "state ok with every replica linked")
        except RuntimeError:
            self.stop()
            raise
        return self

    # -- topology -------------------------------------------------------------------------------

    def _alive(self) -> list[LocalRedis]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def _info(self, node: LocalRedis, section: str) -> dict[str, object]:
        c = node.client(socket_timeout=1.0)
        try:
            return dict(c.cluster("info") if section == "cluster" else c.info(section))
        finally:
            c.close()

    def _healthy(self) -> bool:
        """Every live node reports ``cluster_state:ok`` and all slots ok."""
        try:
            infos = [self._info(n, "cluster") for n in self._alive()]
        except (redis.RedisError, OSError):
            return False
        return all(i.get("cluster_state") == "ok" and int(str(i.get("cluster_slots_ok", 0))) == SLOTS for i in infos)

    def _replicas_linked(self) -> bool:
        """Every master has ``replicas`` connected replicas with their link up (``state=online``)."""
        if not self.replicas:
            return True
        try:
            masters = [i for i in (self._info(n, "replication") for n in self._alive()) if i.get("role") == "master"]
        except (redis.RedisError, OSError):
            return False
        return len(masters) == self.masters and all(
            int(str(m.get("connected_slaves", 0))) >= self.replicas
            and all(isinstance(link := m.get(f"slave{k}"), dict) and link.get("state") == "online"
                    for k in range(self.replicas))
            for m in masters)

    def master_port_of(self, key: str) -> int:
        """Port of the live master serving ``key``'s slot (asked of the cluster, not of a client cache)."""
        slot = self.keyslot(key)
        port = self._slot_master(slot)
        if port is None:
            raise RuntimeError(f"no live node reports a master for slot {slot}")
        return port

    def keyslot(self, key: str) -> int:
        """The cluster slot of ``key``."""
        c = self._alive()[0].client()
        try:
            return int(c.cluster("keyslot", key))
        finally:
            c.close()

    def node(self, port: int) -> LocalRedis:
        """The node listening on ``port``."""
        return next(n for n in self.nodes if n.port == port)

    def kill_master_of(self, key: str) -> Killed:
        """``kill -9`` the master serving ``key``; its replica is promoted after the node timeout."""
        slot = self.keyslot(key)
        port = self.master_port_of(key)
        self.node(port).kill()
        return Killed(port, slot, time.monotonic())

    def wait_failover(self, killed: Killed, timeout: float = 30.0) -> float:
        """Wait until a live master serves the killed master's slot and the cluster is ok; seconds since the kill."""
        def promoted() -> bool:
            try:
                return self._healthy() and self._slot_master(killed.slot) not in (None, killed.port)
            except (redis.RedisError, OSError):
                return False
        self._wait(promoted, timeout, f"a replica to take over slot {killed.slot} from :{killed.port}")
        return time.monotonic() - killed.at

    def rejoin(self, killed: Killed, timeout: float = 30.0) -> float:
        """Restart the killed node (same port and directory: it rejoins as a replica of the master
        that took its slots) and wait until every master has its replicas linked; seconds since the kill."""
        self.node(killed.port).start()
        self._wait(lambda: self._healthy() and self._replicas_linked(), timeout,
                   f":{killed.port} to rejoin as a replica")
        return time.monotonic() - killed.at

    def replica_ports_of(self, master_port: int) -> list[int]:
        """Ports of the replicas linked to the master on ``master_port`` (its ``INFO replication``)."""
        info = self._info(self.node(master_port), "replication")
        return [int(v["port"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]

    def stall_replica(self, port: int, timeout_ms: int) -> None:
        """Make the replica on ``port`` stop applying its replication stream for ``timeout_ms``
        (``CLIENT PAUSE <timeout_ms> ALL``; the pause ends by itself).

        It applies nothing meanwhile, so its ``REPLCONF ACK`` offset stands still (``WAIT`` counts it
        as behind). Observed with Redis 7.0: if its master is killed during the pause, the replica
        comes out of the pause without the writes it had not applied and is promoted without them
        (its failover starts only after the pause). A ``SIGSTOP``/``SIGCONT`` of the replica loses
        nothing on loopback: the stream waits in its socket buffer and is applied after ``SIGCONT``,
        even with the master dead.
        """
        c = self.node(port).client(socket_timeout=2.0)
        try:
            c.execute_command("CLIENT", "PAUSE", timeout_ms, "ALL")
        finally:
            c.close()

    def _slot_master(self, slot: int) -> int | None:
        """Port of the master a live node names for ``slot`` (``CLUSTER SLOTS``: [lo, hi, [host, port, id], ...])."""
        for node in self._alive():
            c = node.client(socket_timeout=1.0)
            try:
                rows = c.execute_command("CLUSTER SLOTS")
            except (redis.RedisError, OSError):
                continue
            finally:
                c.close()
            for lo, hi, primary, *_ in rows:
                if int(lo) <= slot <= int(hi):
                    return int(primary[1])
        return None

    @staticmethod
    def _wait(cond: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if callable(cond) and cond():
                return
            time.sleep(0.05)
        raise RuntimeError(f"cluster: timed out after {timeout}s waiting for {what}")

    def stop(self) -> None:
        """Stop every node and remove their directories."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
