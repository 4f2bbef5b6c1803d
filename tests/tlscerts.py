"""Throwaway TLS material for tests, made with the openssl CLI: a CA, a server certificate for
127.0.0.1/localhost and a client certificate, all signed by that CA."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (certificate, key) named ``name`` under ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key.name, "-out", cert.name, "-days", "2", "-subj", f"/CN={name}", cwd=d)
    return cert, key


def make_signed(d: Path, name: str, ca: tuple[Path, Path], san: str | None = None) -> tuple[Path, Path]:
    """A certificate/key pair ``name`` signed by ``ca`` (with subjectAltName ``san`` if given)."""
    cert, key, csr = d / f"{name}.crt", d / f"{name}.key", d / f"{name}.csr"
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key.name, "-out", csr.name, "-subj", f"/CN={name}", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", csr.name, "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-out", cert.name, "-days", "2", "-extfile", ext.name, cwd=d)
    return cert, key


def make_tls_set(d: Path) -> dict[str, str]:
    """CA, server and client certificates plus an unrelated second CA; returns their paths."""
    ca = make_ca(d, "ca")
    server = make_signed(d, "server", ca, "IP:127.0.0.1,DNS:localhost")
    client = make_signed(d, "client", ca)
    other_ca = make_ca(d, "other-ca")
    return {"ca": str(ca[0]), "cert": str(server[0]), "key": str(server[1]),
            "client_cert": str(client[0]), "client_key": str(client[1]), "other_ca": str(other_ca[0])}
