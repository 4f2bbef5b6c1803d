"""Worker role: wire format, key names and the batching consumer loop.

Importing this package must not import torch (the producer imports ``worker.wire``).
"""
