"""Redis connections shared by all roles: TLS, password sources, and jittered exponential backoff.

Passwords come from exactly one of: the URL (``redis://user:pass@host``), ``BIGRU_REDIS_PASSWORD``,
or a file named by ``BIGRU_REDIS_PASSWORD_FILE`` (read when connecting, trailing newline dropped).
They are held as :class:`pydantic.SecretStr` and never logged; URLs are logged through :func:`redacted`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ClusterDownError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

#: Errors that mean "Redis is unreachable right now", worth retrying after a backoff
#: (the cluster ones happen while a cluster fails over or migrates a slot).
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionResetError, BrokenPipeError, ClusterDownError,
             TryAgainError)

SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
TLS_SCHEMES = ("rediss://", "rediss+cluster://")


class RedisConnSettings(BaseSettings):
    """How to reach Redis; the worker's and the producer's settings both extend this."""

    model_config = SettingsConfigDict(env_prefix="BIGRU_", env_file=".env", extra="ignore")

    redis_url: str = Field(
        "redis://localhost:6379/0",
        description="Redis URL: `redis://`, `rediss://` (TLS), `unix://`, `redis+cluster://` or `rediss+cluster://`",
    )
    redis_username: str | None = Field(None, description="ACL user (or in the URL)")
    redis_password: SecretStr | None = Field(
        None, description="password; give it one way only: in the URL, here, or in `redis_password_file`"
    )
    redis_password_file: Path | None = Field(
        None, description="file holding the password (read when connecting, trailing newline dropped)"
    )
    redis_ca_file: Path | None = Field(
        None, description="TLS: CA bundle that signed the server certificate (unset: the system store)"
    )
    redis_cert_file: Path | None = Field(None, description="TLS: client certificate (with `redis_key_file`)")
    redis_key_file: Path | None = Field(None, description="TLS: client private key (with `redis_cert_file`)")
    redis_tls_check_hostname: bool = Field(True, description="TLS: the server certificate must name the URL's host")
    wait_replicas: int = Field(
        0, ge=0, le=16, description="durability: after its writes (the producer's `XADD`s, the worker's publish script) a "
        "client sends `WAIT` until this many replicas acknowledged them (0: don't wait). See "
        "[docs/reliability.md](docs/reliability.md#failover)"
    )
    wait_timeout_ms: int = Field(
        1000, ge=1, description="durability: longest `WAIT`; fewer replicas by then: the producer raises "
        "`ReplicaAckError`, the worker logs `replica_ack_short` and counts it (`bigru_replica_ack_short`)"
    )

    @model_validator(mode="after")
    def _check_connection(self) -> RedisConnSettings:
        if not self.redis_url.startswith(SCHEMES):
            raise ValueError("redis_url must start with redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://")
        sources = [
            name
            for name, given in (
                ("password in redis_url", urlsplit(self.redis_url).password is not None
                 or "password=" in urlsplit(self.redis_url).query.lower()),
                ("redis_password", self.redis_password is not None),
                ("redis_password_file", self.redis_password_file is not None),
            )
            if given
        ]
        if len(sources) > 1:
            raise ValueError(f"give the Redis password one way only, got {' and '.join(sources)}")
        tls_files = {"redis_ca_file": self.redis_ca_file, "redis_cert_file": self.redis_cert_file,
                     "redis_key_file": self.redis_key_file, "redis_password_file": self.redis_password_file}
        for name, path in tls_files.items():
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a readable file")
        if (self.redis_cert_file is None) != (self.redis_key_file is None):
            raise ValueError("redis_cert_file and redis_key_file go together")
        uses_tls = any(p is not None for p in (self.redis_ca_file, self.redis_cert_file))
        if uses_tls and not self.redis_url.startswith(TLS_SCHEMES):
            raise ValueError("redis_ca_file/redis_cert_file need a rediss:// redis_url")
        return self

    def password(self) -> str | None:
        """The password from the environment or the password file (``None``: URL or no password)."""
        if self.redis_password is not None:
            return self.redis_password.get_secret_value()
        if self.redis_password_file is not None:
            try:
                return self.redis_password_file.read_text().rstrip("\r\n")
            except OSError as e:
                raise ValueError(f"redis_password_file: cannot read {self.redis_password_file}: {e}") from e
        return None

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`connect` (credentials and TLS files)."""
        kw: dict[str, Any] = {}
        if self.redis_username:
            kw["username"] = self.redis_username
        pw = self.password()
        if pw is not None:
            kw["password"] = pw
        if self.redis_url.startswith(TLS_SCHEMES):
            kw["ssl_check_hostname"] = self.redis_tls_check_hostname
            kw["ssl_cert_reqs"] = "required"
            if self.redis_ca_file:
                kw["ssl_ca_certs"] = str(self.redis_ca_file)
            if self.redis_cert_file and self.redis_key_file:
                kw["ssl_certfile"] = str(self.redis_cert_file)
                kw["ssl_keyfile"] = str(self.redis_key_file)
        return kw

    def connect(self, **kwargs: Any) -> redis.Redis:
        """A client for these settings (see :func:`connect`)."""
        return connect(self.redis_url, **self.connection_kwargs(), **kwargs)

    @property
    def redis_url_redacted(self) -> str:
        """The URL safe to log."""
        return redacted(self.redis_url)


def connect(url: str, *, retries: int = 3, socket_timeout: float | None = None, **kwargs: Any) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://``, ``unix://``) that retries transient errors.

    ``redis+cluster://`` / ``rediss+cluster://`` URLs give a Redis Cluster client (see
    ``protocol.cluster``); it offers the same commands for the single-slot keys this system uses.
    TLS options (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``), ``username`` and ``password``
    may be passed through ``kwargs`` (see :meth:`RedisConnSettings.connection_kwargs`).
    """
    from protocol.cluster import connect_cluster, is_cluster_url

    retry = Retry(ExponentialWithJitterBackoff(cap=2.0, base=0.05), retries)
    if is_cluster_url(url):
        return connect_cluster(url, retry=retry, socket_timeout=socket_timeout, **kwargs)
    return redis.Redis.from_url(
        url,
        retry=retry,
        retry_on_error=list(TRANSIENT),
        socket_timeout=socket_timeout,
        socket_connect_timeout=5.0,
        health_check_interval=30,
        **kwargs,
    )


def redacted(url: str) -> str:
    """``url`` with any password (``user:pass@`` or a ``password=`` query parameter) replaced by ``***``."""
    url = re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{parts.username or ''}:***@{host}", parts.path, parts.query, parts.fragment))
