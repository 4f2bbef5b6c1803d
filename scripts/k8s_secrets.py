"""Kubernetes Secrets for bigru-stream's Redis ACL users, with fresh random passwords.

``python scripts/k8s_secrets.py | kubectl apply -f -`` creates, in namespace ``bigru``:

* ``bigru-redis-<role>`` (keys ``username``, ``password``) for each role: ``worker``, ``producer``,
  ``reader``, ``redrive`` (rules from :func:`protocol.security.acl_rules`), ``trainer`` (writes the
  model registry), ``keda`` (reads the lag and pending counts KEDA's scaler asks for), the continuous
  loop's ``labeller``, ``recorder`` and ``loop`` (docs/lifecycle.md#the-loop), and ``admin``;
* ``bigru-redis-acl`` (key ``users.acl``): the ACL file the bundled Redis loads (``--aclfile``), with
  SHA-256 password hashes only and the ``default`` user off.

``--external`` leaves out the ACL file and writes the ``ACL SETUSER`` lines to run on your own server to
``--acl-commands`` (a file, mode 0600: they hold the passwords); ``--ca-file`` adds ``bigru-redis-ca``
(``ca.crt`` and ``tls: enable``, what the worker and KEDA's TriggerAuthentication read).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import sys
from pathlib import Path

import yaml

from protocol.security import acl_rules

ROOT = Path(__file__).resolve().parents[1]

ROLES = ("worker", "producer", "reader", "redrive", "trainer", "keda", "labeller", "recorder", "loop", "admin")


def rules(role: str, prefix: str = "bigru") -> list[str]:
    """ACL rules of ``role`` (without user name and password): :func:`protocol.security.acl_rules`, or admin's."""
    if role == "admin":
        return ["reset", "on", "~*", "&*", "+@all"]
    return acl_rules(role, prefix)  # type: ignore[arg-type]


def acl_file(users: dict[str, str], prefix: str) -> str:
    """An ACL file (``--aclfile``) for ``users`` (role -> password), hashed passwords, default user off."""
    lines = ["user default off resetchannels -@all"]
    for role, pw in users.items():
        lines.append(" ".join(["user", f"bigru-{role}", *rules(role, prefix), "#" + hashlib.sha256(pw.encode()).hexdigest()]))
    return "\n".join(lines) + "\n"


def setuser_lines(users: dict[str, str], prefix: str) -> str:
    """``ACL SETUSER`` commands creating ``users`` on an external server."""
    return "".join(" ".join(["ACL SETUSER", f"bigru-{role}", *rules(role, prefix), ">" + pw]) + "\n"
                   for role, pw in users.items())


def _secret(name: str, namespace: str, data: dict[str, str]) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "bigru-stream"}},
            "stringData": data}


def secrets_docs(users: dict[str, str], *, namespace: str = "bigru", prefix: str = "bigru", external: bool = False,
                 ca_pem: str | None = None) -> list[dict[str, object]]:
    """The Secret objects for ``users`` (role -> password)."""
    docs = [_secret(f"bigru-redis-{role}", namespace, {"username": f"bigru-{role}", "password": pw})
            for role, pw in users.items()]
    if not external:
        docs.append(_secret("bigru-redis-acl", namespace, {"users.acl": acl_file(users, prefix)}))
    if ca_pem is not None:
        docs.append(_secret("bigru-redis-ca", namespace, {"ca.crt": ca_pem, "tls": "enable"}))
    return docs


def main(argv: list[str] | None = None) -> int:
    """Print the Secrets as one YAML stream."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--namespace", default="bigru")
    ap.add_argument("--prefix", default="bigru", help="BIGRU_PREFIX the users are restricted to")
    ap.add_argument("--external", action="store_true", help="no ACL file: the server is yours (see --acl-commands)")
    ap.add_argument("--acl-commands", type=Path, help="with --external: write the ACL SETUSER lines here")
    ap.add_argument("--ca-file", type=Path, help="CA bundle of the server's TLS certificate -> Secret bigru-redis-ca")
    args = ap.parse_args(argv)
    users = {role: secrets.token_urlsafe(24) for role in ROLES}
    if args.acl_commands:
        fd = os.open(args.acl_commands, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(setuser_lines(users, args.prefix))
    ca = args.ca_file.read_text() if args.ca_file else None
    yaml.safe_dump_all(secrets_docs(users, namespace=args.namespace, prefix=args.prefix, external=args.external,
                                    ca_pem=ca), sys.stdout, sort_keys=False, width=1 << 20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
