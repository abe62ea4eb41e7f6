# syntax=docker/dockerfile:1
# The gateway image: serves the model repository mounted at /models on 8000 (REST) and 8001 (gRPC).
#
#   docker build -t model-gateway .                                    # ONNX Runtime (CPU) only
#   docker build --build-arg EXTRAS=torch -t model-gateway:torch .     # + PyTorch (CPU build)
#   docker build --build-arg EXTRAS=gpu -t model-gateway:gpu .         # onnxruntime-gpu
#   docker run -p 8000:8000 -p 8001:8001 -v "$PWD/model-repository:/models:ro" model-gateway
#
# EXTRAS: comma-separated values from torch, tensorflow, jax, s3, gcs, azure (a model repository in that
# object store: s3 for deploy/kubernetes/bucket), gpu, all; empty (the default) serves ONNX
# only. Without gpu, torch comes from PyTorch's CPU index, so the image does not pull GBs of CUDA
# packages. With gpu, onnxruntime is replaced by onnxruntime-gpu (CUDA and cuDNN from pip) and torch, if
# asked for, comes from the default index (CUDA builds); run such an image with the NVIDIA container
# toolkit (docker run --gpus all ...).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY backends backends
COPY converters converters
COPY protos protos
# One pip resolution (one version of every package) into /wheels, then exactly those wheels installed
# into a virtualenv that the final stage copies: no wheel layer ends up in the image.
RUN set -eu; \
    extras=""; gpu=""; torch=""; \
    for extra in $(echo "$EXTRAS" | tr ',' ' '); do \
        case "$extra" in \
            gpu) gpu=1 ;; \
            torch|all) torch=1; extras="${extras:+$extras,}$extra" ;; \
            tensorflow|jax|s3|gcs|azure) extras="${extras:+$extras,}$extra" ;; \
            *) echo "EXTRAS: unknown value '$extra' (allowed: torch, tensorflow, jax, s3, gcs, azure, gpu, all)" >&2; exit 1 ;; \
        esac; \
    done; \
    set -- ".${extras:+[$extras]}"; \
    if [ -n "$gpu" ]; then \
        set -- "$@" "onnxruntime-gpu[cuda,cudnn]" "nvidia-ml-py>=12"; \
    elif [ -n "$torch" ]; then \
        set -- "$@" --extra-index-url https://download.pytorch.org/whl/cpu; \
    fi; \
    pip wheel --wheel-dir /wheels "$@"; \
    if [ -n "$gpu" ]; then rm -f /wheels/onnxruntime-[0-9]*.whl; fi; \
    python -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-deps /wheels/*.whl; \
    /opt/venv/bin/python -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())"; \
    /opt/venv/bin/gateway --help > /dev/null

FROM python:${PYTHON_VERSION}-slim
# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can verify it, and the manifests name it
# (deploy/kubernetes/deployment.yaml and deploy/kserve/servingruntime.yaml: runAsUser 10001).
RUN groupadd --gid 10001 gateway \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/gateway --shell /usr/sbin/nologin gateway \
    && mkdir /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_MODEL_REPOSITORY=/models
USER 10001:10001
WORKDIR /home/gateway
EXPOSE 8000 8001
# Ready, not just live: 400 until the start-up load has finished (urlopen raises on 4xx). No curl in slim.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('GATEWAY_HTTP_PORT', '8000') + '/v2/health/ready', timeout=2)"]
ENTRYPOINT ["gateway"]
CMD ["serve"]
