"""Start a throwaway three-master Redis Cluster on free ports (tests and the scale-out benchmark).

Each node is a :class:`LocalRedis` with ``--cluster-enabled yes``; ``redis-cli --cluster create``
joins them with no replicas. Never touches a Redis it did not start.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import redis

from scripts.localredis import LocalRedis, free_port


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


class LocalCluster:
    """``masters`` redis-server processes joined into one cluster; use as a context manager."""

    def __init__(self, masters: int = 3, args: list[str] | None = None) -> None:
        self.nodes = [
            LocalRedis(port=_free_cluster_port(),
                       args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                             "--cluster-node-timeout", "5000", *(args or [])])
            for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL of the first node (the client discovers the others)."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, timeout: float = 30.0) -> LocalCluster:
        """Start every node, create the cluster and wait until all slots are served."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli not found on PATH (apt-get install redis-tools)")
        for node in self.nodes:
            node.start()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        out = subprocess.run([cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout[-1000:]}{out.stderr[-1000:]}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [redis.Redis(port=n.port).cluster("info") for n in self.nodes]
            if all(s.get("cluster_state") == "ok" for s in states):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"cluster did not reach state ok within {timeout}s")

    def stop(self) -> None:
        """Stop every node and remove their directories."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
