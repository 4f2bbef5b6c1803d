"""The model layer: what the worker and the producer stand on, without any training code.

``network`` (the module) and ``config`` (its dataclass), ``device`` (the one device resolver),
``checkpoint_file`` (the self-describing file format, read without torch) and ``checkpoint``
(weights as torch tensors, writing), ``drift_ref`` (the checkpoint's drift statistics), ``onnx``
and ``quantize`` (the fp32 and int8 graphs), ``data`` and ``formats`` (datasets and their file
formats). The trainer (the rest of ``training/``) stands beside it and imports it; never the reverse.
"""
