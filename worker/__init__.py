"""Worker role: the batching consumer service (collect, decode, predict, encode, publish).

It stands on ``protocol`` (wire format, key names, connections) and on ``training``'s model and
checkpoint format. Importing this package must not import torch.
"""
