#!/usr/bin/env bash
# Make sure a redis-server binary is available: install Debian's package when missing and
# possible; otherwise explain how to get a Redis another way.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
if [ -n "${BIGRU_REDIS_URL:-}" ]; then
  echo "redis-server not installed; relying on BIGRU_REDIS_URL=${BIGRU_REDIS_URL%%@*}..." >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
fi
if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = "0" ] || [ -n "$SUDO" ]; }; then
  echo "installing Debian's redis-server..." >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools >/dev/null
  exit 0
fi
cat >&2 <<'MSG'
No redis-server found and it cannot be installed here.
Either install it (Debian/Ubuntu: apt-get install redis-server), point BIGRU_REDIS_URL at a
running Redis, or start one with:  docker compose up -d redis
MSG
exit 1
