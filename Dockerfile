# syntax=docker/dockerfile:1
# One image for every meshserve process (gateway, feature, cache, inference); docker-compose.yml picks which one
# a container runs through its `command`. Triton runs from its own image (deploy/triton/Dockerfile).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml or constraints.txt change, not
# on every code edit. The list is read from pyproject.toml so that it is never repeated here.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=pyproject.toml,target=/tmp/meshserve/pyproject.toml \
    --mount=type=bind,source=constraints.txt,target=/tmp/meshserve/constraints.txt \
    python -c "import tomllib; deps = tomllib.load(open('/tmp/meshserve/pyproject.toml', 'rb'))['project']['dependencies']; print(*deps, sep='\n')" \
        > /tmp/requirements.txt \
    && pip install -c /tmp/meshserve/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then meshserve itself, from a read-write bind of the build context: the build writes its scratch files there
# and they are thrown away, so no copy of the source tree stays in a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,target=/tmp/meshserve,rw \
    cd /tmp/meshserve && pip install -c constraints.txt .

RUN useradd --create-home --uid 10001 --user-group meshserve
USER meshserve
WORKDIR /home/meshserve

# gateway, feature, cache, inference (the ports docker-compose.yml gives them)
EXPOSE 50051 50052 50053 50054
CMD ["python", "-m", "gateway"]
