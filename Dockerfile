# syntax=docker/dockerfile:1
# The gateway serving ONNX models; EXTRAS picks optional framework extras (e.g. torch).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG EXTRAS=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY backends backends
COPY converters converters
COPY protos protos
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".${EXTRAS:+[$EXTRAS]}"

FROM python:${PYTHON_VERSION}-slim
ARG EXTRAS=""
RUN useradd --create-home --uid 10001 gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "model-gateway${EXTRAS:+[$EXTRAS]}" && rm -rf /wheels
USER gateway
ENV GATEWAY_HOST=0.0.0.0 GATEWAY_MODEL_REPOSITORY=/models
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready')"
ENTRYPOINT ["gateway", "serve"]
