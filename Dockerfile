# Every meshserve image from one file, one build target each:
#   serving  meshserve:dev             gateway, feature, cache and inference (docker-compose.yml picks one
#                                      through its `command`); also `meshserve certs`, `keys` and the healthcheck
#   triton   meshserve-triton-cpu:dev  the same plus the tritonserver bundled in nvidia-pytriton and what the
#                                      sample models import (onnxruntime): Triton on the CPU, no NVIDIA image
# (Triton on a GPU runs NVIDIA's image instead: deploy/triton/Dockerfile, docker-compose.gpu.yml.)
#
# It builds with the classic builder as well as BuildKit: no `# syntax` line (that pulls a frontend image) and
# no `RUN --mount`. Build arguments:
#   BASE_IMAGE           any Debian-based image with Python 3.11 and its shared library (libpython3.11, which
#                        Triton's python-backend stub links): python:3.11-slim, or the debootstrapped Debian
#                        that deploy/compose/test.sh imports where no registry can be reached
#   PIP_INDEX_URL        a package index other than PyPI (a mirror, a proxy); PIP_EXTRA_INDEX_URL beside it
#   PIP_CA_FILE          a CA bundle for that index, as a path inside the build context (e.g. behind a TLS-
#                        inspecting proxy); it is public material, but stays in the dependency layer
# Everything lives in a virtual environment at /opt/meshserve, so both kinds of base give the same paths.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS deps
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_CA_FILE=
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/meshserve/bin:$PATH
# Dependencies first, in their own layer: rebuilt only when pyproject.toml, constraints.txt (or the CA) change,
# not on every code edit. The list is read from pyproject.toml, less what serving never imports: pyarrow
# (Parquet files for `features load` and `score`, run from the host), envoy-data-plane (`meshserve deploy
# envoy`), and the Triton parts, which only the triton target adds. An empty PIP_CA_FILE copies nothing.
COPY pyproject.toml constraints.txt ${PIP_CA_FILE} /opt/meshserve/build/
# The index and CA go into a pip.conf that the later stages' installs read too (their ARGs would be unset).
RUN set -e; \
    ca="/opt/meshserve/build/$(basename "${PIP_CA_FILE:-none}")"; \
    { echo "[global]"; \
      if [ -n "$PIP_INDEX_URL" ]; then echo "index-url = $PIP_INDEX_URL"; fi; \
      if [ -n "$PIP_EXTRA_INDEX_URL" ]; then echo "extra-index-url = $PIP_EXTRA_INDEX_URL"; fi; \
      if [ -f "$ca" ]; then echo "cert = $ca"; fi; } > /opt/meshserve/build/pip.conf; \
    unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL; \
    python3 -m venv /opt/meshserve; \
    python -c "import re, tomllib; \
skip = {'pyarrow', 'envoy-data-plane', 'nvidia-pytriton', 'onnxruntime'}; \
deps = tomllib.load(open('/opt/meshserve/build/pyproject.toml', 'rb'))['project']['dependencies']; \
print(*[d for d in deps if re.split(r'[\s<>=!~;\[]', d)[0].lower() not in skip], sep='\n')" \
        > /opt/meshserve/build/serving.txt; \
    PIP_CONFIG_FILE=/opt/meshserve/build/pip.conf \
        pip install --quiet -c /opt/meshserve/build/constraints.txt -r /opt/meshserve/build/serving.txt
RUN useradd --create-home --uid 10001 --user-group meshserve

# meshserve itself, as a wheel built in a throwaway stage: no copy of the source tree stays in a layer.
FROM deps AS wheel
COPY . /src
RUN PIP_CONFIG_FILE=/opt/meshserve/build/pip.conf pip wheel --quiet --no-deps --wheel-dir /wheels /src

FROM deps AS serving
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --quiet --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
USER meshserve
WORKDIR /home/meshserve
# gateway, feature, cache, inference (the ports docker-compose.yml gives them)
EXPOSE 50051 50052 50053 50054
CMD ["python", "-m", "gateway"]

# Triton's extras before the code, so that a code change does not reinstall them.
FROM deps AS triton
RUN PIP_CONFIG_FILE=/opt/meshserve/build/pip.conf pip install --quiet -c /opt/meshserve/build/constraints.txt nvidia-pytriton onnxruntime "numpy<2"
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --quiet --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
USER meshserve
WORKDIR /home/meshserve
# gRPC, HTTP (health), metrics: Triton's defaults
EXPOSE 8001 8000 8002
CMD ["python", "-m", "services.inference.run_triton", "--model-repository=/models"]
