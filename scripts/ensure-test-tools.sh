#!/usr/bin/env bash
# The tools some tests use beside redis-server (`make test` runs this; each test that needs a missing
# one skips and says why): openssl (the TLS tests' throwaway CA), prometheus + promtool (a real
# scrape of a worker; the dashboard's PromQL and the alert rules). Installs Debian's packages when
# missing and possible; never fails the run.
set -uo pipefail
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
fi
if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = "0" ] || [ -n "$SUDO" ]; }; then
  echo "installing Debian's ${missing[*]} for the tests..." >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    $SUDO apt-get update -qq >/dev/null 2>&1
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
      || echo "warning: could not install ${missing[*]}; the tests that need them will be skipped" >&2
  fi
  exit 0
fi
echo "note: ${missing[*]} not installed and cannot be installed here; the tests that need them will be skipped" \
     "(Debian/Ubuntu: apt-get install ${missing[*]})" >&2
exit 0
