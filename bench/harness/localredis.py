"""Start a throwaway ``redis-server`` on a free port with its own temporary directory.

Used by the test fixtures, the demo and the benchmark. Never touches a Redis it did not start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalRedis:
    """A redis-server child process; use as a context manager or call start()/stop().

    The server binary is ``server``, else ``$BIGRU_TEST_SERVER`` (read at start, e.g. a ``valkey-server``),
    else ``redis-server`` from PATH.

    With ``tls`` (a dict with ``cert``, ``key`` and ``ca`` file paths) the server listens on TLS
    only and accepts clients with or without a certificate signed by ``ca``.
    """

    def __init__(
        self,
        port: int | None = None,
        args: list[str] | None = None,
        dir: str | None = None,
        tls: dict[str, str] | None = None,
        password: str | None = None,
        server: str | None = None,
    ) -> None:
        self.server = server
        self.port = port or free_port()
        self.args = list(args or [])
        self.tls = tls
        self.password = password
        self._own_dir = dir is None
        self.dir = Path(dir or tempfile.mkdtemp(prefix="bigru-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://`` (``rediss://`` with TLS) URL of this server, without the password."""
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: object) -> redis.Redis:
        """An admin client (default user, server CA trusted)."""
        opts: dict[str, object] = {"port": self.port, "password": self.password, "socket_connect_timeout": 0.5}
        if self.tls:
            opts.update(ssl=True, ssl_ca_certs=self.tls["ca"])
        opts.update(kwargs)
        return redis.Redis(**opts)

    def _server_args(self) -> list[str]:
        args = ["--port", str(self.port)]
        if self.tls:
            args = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.tls["cert"],
                    "--tls-key-file", self.tls["key"], "--tls-ca-cert-file", self.tls["ca"],
                    "--tls-auth-clients", "optional"]
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def start(self, timeout: float = 10.0) -> LocalRedis:
        """Start the server and wait until it answers PING."""
        exe = self.server or os.environ.get("BIGRU_TEST_SERVER") or shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found on PATH (apt-get install redis-server)")
        cmd = [exe, *self._server_args(), "--bind", "127.0.0.1", "--dir", str(self.dir),
               "--save", "", "--appendonly", "no", "--protected-mode", "no", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {' '.join(cmd)}")
            try:
                if self.client().ping():
                    return self
            except (redis.RedisError, OSError):
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout}s")

    def kill(self) -> None:
        """SIGKILL the server (for crash tests); its directory is kept."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """Stop the server and remove its directory if we created it."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
