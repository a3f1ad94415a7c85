# syntax=docker/dockerfile:1
# One image for both services of docker-compose.yml: the API (uvicorn on port 8000) and the Voila
# dashboard (port 8866). It runs on the CPU as built and on an NVIDIA GPU when the container gets
# one (`--gpus all`, or docker-compose.gpu.yml), because the PyPI build of torch 2.11 installs the
# CUDA 13.0 runtime and cuDNN 9 as pip packages. The host then needs only the NVIDIA driver (580
# series or newer for CUDA 13) and the NVIDIA Container Toolkit; check_nvidia_runtime.sh checks both.
#
# Build arguments:
#   BASE             base image; it must be Debian or Ubuntu. Default python:3.11-slim-bookworm.
#                    A CUDA base such as nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 also works:
#                    Python 3.11 then comes from Ubuntu's python3.11 package.
#   TORCH_INDEX_URL  an extra package index for torch and torchaudio, e.g.
#                    https://download.pytorch.org/whl/cpu for a CPU-only image several GB smaller,
#                    or https://download.pytorch.org/whl/cu128 for drivers older than the 580
#                    series that CUDA 13.0 needs. Empty: PyPI's build.
#   ASR_UID, ASR_GID the id of the user `asr` that runs the services; match the owner of the
#                    host's data/ and checkpoints/ folders (run-local.sh passes `id -u` and `id -g`).

ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG TORCH_INDEX_URL=
ARG DEBIAN_FRONTEND=noninteractive

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    ASR_DATA_DIR=/app/data \
    ASR_CHECKPOINTS_DIR=/app/checkpoints \
    ASR_LJSPEECH_PATH=/app/data/ljspeech

# ffmpeg and libsndfile decode audio, espeak-ng synthesises the demo dataset and sox converts
# clips. gcc and g++ serve training.compile: torch.compile's inductor builds C++ kernels on the
# CPU, and Triton builds its launcher with a C compiler on CUDA. A base without python3.11 (the
# Ubuntu CUDA images) gets Ubuntu's python3.11, with the headers those builds include.
RUN set -eux; \
    apt-get update; \
    packages="ca-certificates ffmpeg libsndfile1 espeak-ng sox gcc g++"; \
    if ! command -v python3.11 >/dev/null; then packages="$packages python3.11 python3.11-venv python3.11-dev"; fi; \
    apt-get install -y --no-install-recommends $packages; \
    rm -rf /var/lib/apt/lists/*; \
    python3.11 -m venv "$VIRTUAL_ENV"; \
    python -m pip install --upgrade pip

# The dependencies first, so that a change to the code reuses this layer (torch is several GB).
# The editable install keeps the package's root at /app, where asrlib looks for config.yaml,
# notebooks/ and the default data/ and checkpoints/ folders.
WORKDIR /app
COPY pyproject.toml README.md ./
RUN set -eux; \
    mkdir asrlib; \
    touch asrlib/__init__.py; \
    python -m pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -e .; \
    rm -r asrlib

COPY . .
# Declared here, because a changed build argument invalidates every RUN layer after its ARG line.
ARG ASR_UID=1000
ARG ASR_GID=1000
RUN set -eux; \
    python -m pip install --no-deps -e .; \
    groupadd --non-unique --gid "$ASR_GID" asr; \
    useradd --non-unique --uid "$ASR_UID" --gid "$ASR_GID" --create-home --shell /bin/bash asr; \
    mkdir -p /app/data /app/checkpoints; \
    chown -R asr:asr /app/data /app/checkpoints

USER asr
VOLUME ["/app/data", "/app/checkpoints"]
EXPOSE 8000 8866

# docker-compose.yml runs the API with this command and gives the dashboard its own.
CMD ["uvicorn", "asrlib.api.app:app", "--host", "0.0.0.0", "--port", "8000"]
