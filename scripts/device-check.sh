#!/usr/bin/env bash
# The device check's entry point (docs/device-check.md): the script lives in scripts/device/check.sh.
exec bash "$(dirname "$0")/device/check.sh" "$@"
