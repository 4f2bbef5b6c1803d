#!/usr/bin/env bash
# One-shot check on a lent GPU machine (see docs/device-check.md):
#   bash scripts/device-check.sh            (writes results/bench-gpu/; OUT=/some/dir to write elsewhere)
# 1. installs the Python packages the machine lacks from carried wheels (.whl/*.whl, into /tmp/site);
# 2. finds a redis-server: the system's, else .whl/bin/redis-server (Debian 7.0.15 + its libs),
#    else .whl/bin/valkey-server; without one the Redis-backed steps are skipped;
# 3. runs python -m scripts.device.check (scripts/device/check.py with scripts/device/*.py):
#    env, pytest -m gpu, model throughput, training, pipeline, ONNX CPU.
# Results: $OUT/device.json, device.md, env.txt, pytest-gpu.log, steps.log, workers.log.
# DEVICE_CHECK_DRY=1 (or no CUDA) runs the same flow on CPU with tiny sizes.
# DEVICE_CHECK_SYSTEM_REDIS=0 ignores a redis-server already on PATH (to test the carried one).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
OUT=${OUT:-$ROOT/results/bench-gpu}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export OUT
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${DEVICE_CHECK_SITE:-/tmp/site}
LOG=$OUT/steps.log
T0=$(date +%s)
note() { echo "[device-check] $*" | tee -a "$LOG"; }
note "start $(date -u +%FT%TZ) in $ROOT, OUT=$OUT, python=$($PY -c 'import sys; print(sys.version.split()[0])' 2>&1)"

# -- 1. wheels -------------------------------------------------------------------------------------
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  mapfile -t MISSING < <($PY -m scripts.device.check --missing-wheels "$WHEELS" 2>>"$LOG")
  if [ "${#MISSING[@]}" -gt 0 ]; then
    note "installing ${#MISSING[@]} wheel(s) into $SITE: $(for w in "${MISSING[@]}"; do basename "$w" | cut -d- -f1-2; done | tr '\n' ' ')"
    if ! timeout 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
         --target "$SITE" "${MISSING[@]}" >>"$LOG" 2>&1; then
      note "pip failed; unzipping the wheels instead"
      timeout 60 $PY -m scripts.device.check --extract-wheels "$WHEELS" --target "$SITE" >>"$LOG" 2>&1 \
        || note "unzipping failed too"
    fi
    export PYTHONPATH=$SITE:$PYTHONPATH
  else
    note "every carried wheel is already installed"
  fi
else
  note "no $WHEELS/*.whl: using the machine's packages as they are"
fi
$PY -c 'import redis, pydantic, pydantic_settings, structlog' >>"$LOG" 2>&1 \
  || note "WARNING: redis/pydantic/pydantic-settings/structlog not importable: most steps will fail"

# -- 2. redis-server -------------------------------------------------------------------------------
BIN=/tmp/device-check-bin
works() { timeout 10 "$1" --version >>"$LOG" 2>&1; }
if [ "${DEVICE_CHECK_SYSTEM_REDIS:-1}" != 0 ] && command -v redis-server >/dev/null && works "$(command -v redis-server)"; then
  note "redis-server: $(command -v redis-server)"
elif [ -d "$WHEELS/bin" ]; then
  rm -rf "$BIN" && mkdir -p "$BIN" && cp -r "$WHEELS/bin" "$BIN/bin" && chmod +x "$BIN"/bin/*
  [ -d "$WHEELS/lib" ] && cp -r "$WHEELS/lib" "$BIN/lib"
  if [ -x "$BIN/bin/redis-server" ] && works "$BIN/bin/redis-server"; then
    export PATH=$BIN/bin:$PATH
    note "redis-server: carried Debian build ($BIN/bin/redis-server, libs in $BIN/lib)"
  elif [ -x "$BIN/bin/valkey-server" ] && works "$BIN/bin/valkey-server"; then
    mkdir -p "$BIN/valkey" && ln -sf "$BIN/bin/valkey-server" "$BIN/valkey/redis-server"
    export PATH=$BIN/valkey:$PATH
    note "redis-server: carried valkey-server (the Debian build did not start here)"
  else
    note "SKIP: no working redis-server (carried binaries failed, see steps.log): Redis-backed steps are skipped"
  fi
else
  note "SKIP: no redis-server on PATH and no $WHEELS/bin: Redis-backed steps are skipped"
fi

# -- 3. the steps ----------------------------------------------------------------------------------
export MPLCONFIGDIR=${MPLCONFIGDIR:-/tmp/device-check-mpl}
# A hard stop at ~465 s from the start (times DEVICE_CHECK_TIME_SCALE): the run must end within 8 minutes.
LIMIT=${DEVICE_CHECK_TIMEOUT:-$(awk -v s="${DEVICE_CHECK_TIME_SCALE:-1}" -v e=$(( $(date +%s) - T0 )) 'BEGIN { printf "%d", 465 * s - e }')}
timeout -k 10 "$LIMIT" $PY -m scripts.device.check --out "$OUT"
rc=$?
[ "$rc" -eq 124 ] && note "scripts/device/check.py hit the overall limit of ${LIMIT} s (partial results kept)"
note "done in $(( $(date +%s) - T0 )) s (exit $rc); files: $(cd "$OUT" && ls | tr '\n' ' ')"
exit "$rc"
