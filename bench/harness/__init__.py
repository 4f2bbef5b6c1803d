"""The one harness of the benchmarks, the scripts and the tests: a throwaway ``redis-server`` or Redis
Cluster on free ports, worker processes (their environment from ``WorkerSettings``, start, stop), RSS.

Never touches a Redis it did not start.
"""

from bench.harness.localcluster import Killed, LocalCluster
from bench.harness.localredis import LocalRedis, free_port
from bench.harness.workers import (
    HarnessError,
    env_name,
    env_value,
    maps_torch,
    memory_kib,
    rss_mib,
    settings_env,
    start_worker,
    terminate,
    worker_process_env,
)

__all__ = ["HarnessError", "Killed", "LocalCluster", "LocalRedis", "env_name", "env_value", "free_port", "maps_torch",
           "memory_kib", "rss_mib", "settings_env", "start_worker", "terminate", "worker_process_env"]
