"""``make bench``: model-only, naive-worker and pipeline (saturated and open-loop) measurements.

Everything runs against a redis-server the benchmark starts itself; results go to ``results/bench``.
"""
