"""The protocol layer all three roles stand on: the wire format (``wire``, ``wire_multi``), key
names (``keys``), Redis connections, cluster and TLS/ACL handling (``redisconn``, ``cluster``,
``security``), the model registry's Redis layout (``registry``) and log setup (``logs``).

It imports neither torch nor any role package (``worker``, ``producer``, ``training``); see
``docs/architecture.md``.
"""
