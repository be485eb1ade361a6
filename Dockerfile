# syntax=docker/dockerfile:1.7
# oodgate images. One Dockerfile, two variants picked by a build argument:
#
#   docker build -t oodgate:cpu .                                   # CPU (python:3.11-slim)
#   docker build -t oodgate:cuda --build-arg VARIANT=cuda .         # CUDA (NVIDIA runtime base)
#
# torch is pinned (pyproject.toml). Its default wheel on Linux carries CUDA libraries;
# for a small CPU image point pip at a CPU-only wheel index you trust:
#   --build-arg TORCH_INDEX_URL=<CPU wheel index URL>
#
# The builder stage makes a virtual environment; the runtime stage copies only that and
# the model repository, runs as an unprivileged user, and reports health on the Open
# Inference Protocol's readiness endpoint (false until the model is loaded and warm).

ARG VARIANT=cpu
ARG CUDA_BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# ---- bases: the same OS image for building and running, so the venv's Python matches ----
FROM python:3.11-slim AS base-cpu
ENV PYTHON=python3

FROM ${CUDA_BASE} AS base-cuda
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV PYTHON=python3

# ---- builder: install oodgate and its runtime dependencies into /opt/venv ----
FROM base-${VARIANT} AS builder
ARG VARIANT
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN ${PYTHON} -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# torch first and alone: the layer is large and changes only with its pin.
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0; \
    else pip install torch==2.13.0; fi
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
RUN pip install . \
 && if [ "$VARIANT" = "cuda" ]; then pip uninstall -y onnxruntime && pip install onnxruntime-gpu; fi

# ---- runtime ----
FROM base-${VARIANT} AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="oodgate" \
      org.opencontainers.image.description="Flow-based out-of-distribution gate for image models (${VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 oodgate \
 && useradd --system --uid 10001 --gid oodgate --home-dir /app --shell /usr/sbin/nologin oodgate
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# The default model is part of the image; mount another repository over /app/models to replace it.
COPY --chown=oodgate:oodgate models ./models
# The demo classifier (docker-compose.yml runs it from this same image).
COPY --chown=oodgate:oodgate examples ./examples
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MALLOC_MMAP_THRESHOLD_=33554432 \
    MALLOC_TRIM_THRESHOLD_=268435456 \
    OODGATE_HOST=0.0.0.0 \
    OODGATE_PORT=8000 \
    OODGATE_MODELS_ROOT=/app/models
USER 10001:10001
EXPOSE 8000
# Warm-up takes a few seconds; readiness stays false until every batch size has run once.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('OODGATE_PORT', '8000'), timeout=2)"]
# SIGTERM starts a graceful drain; the process exits within OODGATE_DRAIN_TIMEOUT_S + OODGATE_SHUTDOWN_GRACE_S
# (35 s by default): give `docker stop -t` at least that (docker-compose.yml gives 40 s).
STOPSIGNAL SIGTERM
CMD ["oodgate-serve"]
