# syntax=docker/dockerfile:1
# Targets: `serve` (a CPU worker or producer without torch: the worker serves the ONNX graph stored in
# the checkpoint with onnxruntime), `cpu` (CPU wheel of torch: training, the torch backend) and `cuda`
# (CUDA build of torch).
FROM python:3.11-slim AS base
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY worker ./worker
COPY producer ./producer
COPY training ./training

FROM base AS serve
RUN pip install --no-cache-dir ".[serve]"
USER nobody
CMD ["bigru-worker"]

FROM base AS cpu
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && pip install --no-cache-dir ".[model,train,onnx]"
USER nobody
CMD ["bigru-worker"]

FROM base AS cuda
ARG TORCH_VERSION=2.13.0
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" && pip install --no-cache-dir ".[model,train]"
USER nobody
CMD ["bigru-worker", "--device", "cuda"]
