"""The contracts between flywheel's parts, the bottom layer (docs/architecture.md).

Everything two parts exchange is defined here once: the wire protocol and its message payloads, the
ZeroMQ addresses and CurveZMQ keys, the dataset's schema and on-disk layout, the model registry.
Nothing here imports from the rest of the project.
"""
