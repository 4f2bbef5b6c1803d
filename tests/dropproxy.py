"""A TCP proxy in front of a redis-server that, once armed, loses one reply: it forwards a client's
write to the server, then closes the client's connection instead of relaying the server's reply.

That is the lost-reply case of idempotent publishing: the write happened, the client cannot know,
and redis-py's retry sends it again.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType


class DropReplyProxy:
    """Listens on a free local port and forwards to ``127.0.0.1:<target_port>``; use as a context manager.

    :meth:`arm` with a byte pattern: the next client write containing it is forwarded, and the first
    server reply after it is dropped together with the connection (once). ``dropped`` counts drops.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pattern: bytes | None = None
        self.dropped = 0
        self._socks: list[socket.socket] = []

    @property
    def url(self) -> str:
        """``redis://`` URL of the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    def arm(self, pattern: bytes) -> None:
        """Drop the reply to the next client write containing ``pattern``."""
        with self._lock:
            self._pattern = pattern

    def __enter__(self) -> DropReplyProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._listener.close()
        for s in self._socks:
            _close(s)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self._socks += [client, server]
            conn = {"armed": False}
            threading.Thread(target=self._up, args=(client, server, conn), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, conn), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, conn: dict[str, bool]) -> None:
        """Client -> server; marks the connection when the armed pattern passes."""
        while data := _recv(client):
            with self._lock:
                if self._pattern is not None and self._pattern in data:
                    self._pattern = None
                    conn["armed"] = True
            try:
                server.sendall(data)
            except OSError:
                break
        _close(server)

    def _down(self, server: socket.socket, client: socket.socket, conn: dict[str, bool]) -> None:
        """Server -> client; on a marked connection the reply is dropped and both ends closed."""
        while data := _recv(server):
            if conn["armed"]:
                self.dropped += 1
                break
            try:
                client.sendall(data)
            except OSError:
                break
        _close(client)
        _close(server)


def _recv(s: socket.socket) -> bytes:
    try:
        return s.recv(65536)
    except OSError:
        return b""


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
