"""The device check: one run on a lent GPU machine (``scripts/device/check.sh``, docs/device-check.md)."""
