#!/usr/bin/env bash
# `make compose-test`: the docker-compose stack, run end to end on this machine.
#
#   engine   Docker's engine: Debian's docker.io installed if missing (as root, with apt); a daemon of our own
#            started when none answers (overlay2, else vfs), with its data under $DATA_ROOT so that images stay
#            cached between runs, and stopped again at the end
#   base     a base image: python:3.11-slim where a registry answers, else Debian bookworm from debootstrap,
#            imported once as meshserve-base:bookworm and reused afterwards
#   build    meshserve:dev and meshserve-triton-cpu:dev (the Dockerfile's targets), and without a registry
#            meshserve-tools:dev (Envoy, Prometheus, Redis: deploy/compose/offline.yml)
#   up       every service that can run here, awaited healthy (compose's own healthchecks)
#   score    one Predict through Envoy and one straight to the gateway (TLS, checked against the stack's CA),
#            from the host's CLI, with an API key made by `meshserve keys create` in the gateway container; one
#            REST inference (the Open Inference Protocol over HTTP) through Envoy and one straight to the gateway,
#            the same scores
#   labels   a label for the last answer through the gateway's feedback API (`meshserve feedback load`), then
#            `meshserve quality` from the monitor's published port counts it
#   control  new weights for route `fraud` through the first gateway's admin API (`meshserve canary weights`);
#            both gateways serve them within a few seconds (`meshserve canary status` on each admin API), since
#            they share Redis as their control store
#   scrape   every Prometheus target reports up (/api/v1/targets), both gateways among them
#   failover Predicts through Envoy from 8 callers for a few seconds, `docker kill` of gateway-2 in the middle:
#            not one fails (Envoy retries what the dead gateway never answered on the other one), and both
#            gateways answered before the kill (Envoy's access log)
#   down     `docker-compose down -v`, always, even after a failure
# Each phase prints how long it took. The stack's ports are published on free ports of 127.0.0.1 for the run.
set -euo pipefail
cd "$(dirname "$0")/../.."

PROJECT=meshserve-compose-test
DATA_ROOT=${MESHSERVE_COMPOSE_DATA_ROOT:-/var/lib/meshserve-compose-test}
RUNTIME=/run/meshserve-compose-test  # our daemon's socket, pid file and exec root
BASE_IMAGE=${BASE_IMAGE:-}
DEBIAN_BASE=meshserve-base:bookworm
PIP_CA=deploy/compose/.pip-ca.pem  # the host's pip CA, copied into the build context (git-ignored)
HEALTH_TIMEOUT_S=${HEALTH_TIMEOUT_S:-300}
MESHSERVE=${MESHSERVE:-.venv/bin/meshserve}
PYTHON=${PYTHON:-.venv/bin/python}  # the CLI's environment: it has PyYAML
export DOCKER_BUILDKIT=0  # the classic builder: what compose 1.29 uses, and the one that works offline
export COMPOSE_PROJECT_NAME=$PROJECT

started_daemon=""
compose_up=""
work=$(mktemp -d)
phase_start=$SECONDS
total_start=$SECONDS

say() { printf '[compose-test] %s\n' "$*"; }
fail() { say "FAILED: $*"; exit 1; }
phase() { # phase NAME: the previous phase's time, then the next one's name
  if [ -n "${current:-}" ]; then say "$(printf '%-8s %4ds' "$current" $((SECONDS - phase_start)))"; fi
  current=$1
  phase_start=$SECONDS
}

compose_files=(-f docker-compose.yml)
compose() { docker-compose "${compose_files[@]}" "$@"; }

cleanup() {
  status=$?
  trap - EXIT
  if [ -n "$compose_up" ]; then
    if [ "$status" != 0 ]; then
      say "the last lines of every service that is not healthy:"
      for id in $(compose ps -a -q 2>/dev/null); do
        state=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}} (exit {{.State.ExitCode}}){{end}}' "$id")
        case "$state" in healthy | "exited (exit 0)" | "running (exit 0)") continue ;; esac
        say "--- $(docker inspect -f '{{.Name}}' "$id"): $state"
        docker logs --tail 30 "$id" 2>&1 | sed 's/^/    /'
      done
    fi
    phase down
    compose down -v --remove-orphans --timeout 20 >/dev/null 2>&1 || say "docker-compose down failed"
  fi
  rm -f "$PIP_CA"
  rm -rf "$work"
  if [ -n "$started_daemon" ]; then
    kill "$started_daemon" 2>/dev/null || true
    wait "$started_daemon" 2>/dev/null || true
  fi
  phase done
  say "total   $((SECONDS - total_start))s: $([ "$status" = 0 ] && echo passed || echo FAILED)"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -- engine -------------------------------------------------------------------------------------------------
phase engine
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || fail "install ${need[*]} (needs root and apt here)"
  say "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || fail "no Docker daemon answers, and starting one needs root"
  mkdir -p "$RUNTIME" "$DATA_ROOT/docker"
  export DOCKER_HOST=unix://$RUNTIME/docker.sock
  for driver in overlay2 vfs; do
    say "starting dockerd (storage driver $driver, data in $DATA_ROOT/docker)"
    dockerd --storage-driver="$driver" --data-root="$DATA_ROOT/docker" --exec-root="$RUNTIME/exec" \
      --pidfile="$RUNTIME/docker.pid" --host="$DOCKER_HOST" >"$DATA_ROOT/dockerd.log" 2>&1 &
    pid=$!
    for _ in $(seq 60); do
      docker info >/dev/null 2>&1 && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if docker info >/dev/null 2>&1; then started_daemon=$pid; break; fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [ -n "$started_daemon" ] || fail "dockerd did not start: $(tail -3 "$DATA_ROOT/dockerd.log")"
fi
# The client may be newer than the daemon (Debian's engine is 20.10): speak the daemon's API version, which
# docker-compose's own client needs told.
DOCKER_API_VERSION=$(docker version --format '{{.Server.APIVersion}}')
export DOCKER_API_VERSION
say "engine $(docker version --format '{{.Server.Version}}') (API $DOCKER_API_VERSION), $(docker-compose version --short)"

# -- base image ---------------------------------------------------------------------------------------------
phase base
offline=""
if [ -z "$BASE_IMAGE" ]; then
  if docker image inspect python:3.11-slim >/dev/null 2>&1 || timeout 120 docker pull -q python:3.11-slim >/dev/null 2>&1; then
    BASE_IMAGE=python:3.11-slim
  else
    offline=1
    BASE_IMAGE=$DEBIAN_BASE
    if ! docker image inspect "$DEBIAN_BASE" >/dev/null 2>&1; then
      command -v debootstrap >/dev/null 2>&1 || {
        [ "$(id -u)" = 0 ] || fail "no registry answers and debootstrap is missing"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
      }
      say "no registry answers: building $DEBIAN_BASE with debootstrap"
      rootfs="$work/rootfs"
      # Python 3.11 with its shared library (Triton's python-backend stub links it): what python:3.11-slim has.
      debootstrap --variant=minbase --include=python3,python3-venv,libpython3.11,ca-certificates \
        bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 ||
        fail "debootstrap: $(tail -3 "$work/debootstrap.log")"
      tar -C "$rootfs" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' -c 'ENV LANG=C.UTF-8' \
        -c 'CMD ["bash"]' - "$DEBIAN_BASE" >/dev/null
      rm -rf "$rootfs"
    fi
  fi
fi
say "base image $BASE_IMAGE"
[ -n "$offline" ] && compose_files+=(-f deploy/compose/offline.yml)

# -- build --------------------------------------------------------------------------------------------------
phase build
# The package index the host's pip uses, and its CA (e.g. a TLS-inspecting proxy's), passed to the build.
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
index=$("$PYTHON" -m pip config get global.index-url 2>/dev/null || true)
[ -n "${PIP_INDEX_URL:-$index}" ] && build_args+=(--build-arg "PIP_INDEX_URL=${PIP_INDEX_URL:-$index}")
ca=${PIP_CERT:-$("$PYTHON" -m pip config get global.cert 2>/dev/null || true)}
if [ -n "$ca" ] && [ -f "$ca" ]; then
  cp "$ca" "$PIP_CA"
  build_args+=(--build-arg "PIP_CA_FILE=$PIP_CA")
fi
build() { # build IMAGE DOCKERFILE [TARGET]
  local start=$SECONDS
  docker build -q --network host "${build_args[@]}" -f "$2" ${3:+--target "$3"} -t "$1" . >"$work/build.log" 2>&1 ||
    { tail -30 "$work/build.log"; fail "building $1"; }
  say "  $1 in $((SECONDS - start))s ($(docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'))"
}
build meshserve:dev Dockerfile serving
build meshserve-triton-cpu:dev Dockerfile triton
[ -n "$offline" ] && build meshserve-tools:dev deploy/compose/tools.Dockerfile
# The serving image stays lean: what only Triton, Parquet files or `meshserve deploy envoy` need is not in it.
docker run --rm --entrypoint python meshserve:dev -c '
import importlib.util, sys
extra = [m for m in ("pytriton", "onnxruntime", "pyarrow", "envoy_data_plane") if importlib.util.find_spec(m)]
sys.exit(f"meshserve:dev carries {extra}" if extra else 0)' || fail "the serving image is not lean"

# -- up -----------------------------------------------------------------------------------------------------
phase up
# The stack as compose merges it, every published port moved to a free one on 127.0.0.1: a `meshserve up` (or
# anything else) already on 50051 then does not collide. Ports are chosen just before starting, and the file
# is otherwise compose's own rendering of docker-compose.yml (and offline.yml).
compose config >"$work/merged.yml"
ports=$("$PYTHON" - "$work/merged.yml" "$work/stack.yml" <<'EOF'
import socket, sys, yaml

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

stack = yaml.safe_load(open(sys.argv[1]))
for name, service in stack["services"].items():
    moved = []
    for port in service.get("ports", []):
        host, _, target = str(port).rpartition(":")  # 127.0.0.1:50051:50051/tcp
        published = free_port()
        moved.append(f"127.0.0.1:{published}:{target}")
        print(f"{name}:{target.split('/')[0]}={published}")
    if moved:
        service["ports"] = moved
yaml.safe_dump(stack, open(sys.argv[2], "w"), sort_keys=False)
EOF
)
published() { echo "$ports" | sed -n "s/^$1=//p"; }  # published SERVICE:PORT -> the host port
compose_files=(-f "$work/stack.yml" --project-directory .)
services=(gateway gateway-2 envoy prometheus redis)
[ -z "$offline" ] && services+=(grafana jaeger)  # their images exist only in a registry
compose_up=1
# compose starts the dependencies first and waits for each `service_healthy` condition on the way.
timeout "$HEALTH_TIMEOUT_S" docker-compose "${compose_files[@]}" up -d --no-build "${services[@]}" \
  >"$work/up.log" 2>&1 || { cat "$work/up.log"; fail "docker-compose up"; }
deadline=$((SECONDS + HEALTH_TIMEOUT_S))
while :; do
  waiting=()
  running=()
  for id in $(compose ps -q); do
    read -r name state < <(docker inspect -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id")
    name=${name#/"$PROJECT"_}
    running+=("${name%_1}")
    case "$state" in
      healthy | exited) ;;  # exited: the one-shot certs service (up -d would have failed had it failed)
      running) [[ "$name" == *jaeger* ]] || waiting+=("$name:$state") ;;  # no healthcheck possible
      *) waiting+=("$name:$state") ;;
    esac
  done
  [ ${#waiting[@]} = 0 ] && break
  [ $SECONDS -lt $deadline ] || fail "not healthy after ${HEALTH_TIMEOUT_S}s: ${waiting[*]}"
  sleep 1
done
say "healthy: ${running[*]}"

# -- score --------------------------------------------------------------------------------------------------
phase score
certs=$(compose ps -a -q certs)
mkdir -p "$work/run"
docker cp "$certs:/certs" "$work/run/certs"
key=$(compose exec -T gateway meshserve keys create compose-test --role scorer 2>/dev/null | tail -n 1)
[ -n "$key" ] || fail "meshserve keys create printed no key"
predict() { # predict LABEL TARGET [ENV...]: one Predict, its answer checked, its score and prediction id in
  # $score and $prediction_id
  local label=$1 target=$2
  shift 2
  local answer
  answer=$(env MESHSERVE_RUN_DIR="$work/run" "$@" "$MESHSERVE" predict fraud acct-00042 amount=250 merchant_category=3 \
    --target "$target" --timeout 10 -o json) || fail "Predict through $label"
  local result
  result=$("$PYTHON" - "$label" "$answer" <<'EOF'

import json, sys
label, answer = sys.argv[1], json.loads(sys.argv[2])
(prediction,) = answer["predictions"]
assert answer["route"] == "fraud" and prediction["entity_key"] == "acct-00042", answer
assert 0.0 <= prediction["score"] <= 1.0 and prediction["model_version"], answer
print(f"[compose-test]   through {label}: score {prediction['score']:.4f}, variant {prediction['variant']}, "
      f"fraud v{prediction['model_version']}, tier {prediction['tier']}"
      + (" (from the cache)" if prediction["from_cache"] else ""), file=sys.stderr)
assert prediction["prediction_id"], answer  # what a label names
print(prediction["score"], prediction["prediction_id"])
EOF
  ) || fail "Predict through $label answered $answer"
  read -r score prediction_id <<<"$result"
}
# Envoy's listener is plaintext (deploy/envoy/envoy.yaml); the API key authenticates the caller to the gateway.
envoy=127.0.0.1:$(published envoy:8080)
predict "Envoy ($envoy)" "$envoy" MESHSERVE_TLS=0 MESHSERVE_API_KEY="$key"
before=$score
# Straight to the gateway: TLS, its certificate checked against the stack's CA; the same key.
gateway=127.0.0.1:$(published gateway:50051)
predict "the gateway ($gateway)" "$gateway" MESHSERVE_TLS=1 MESHSERVE_API_KEY="$key"
# New stored features for that account through the published feature port (mTLS, the `admin` certificate):
# the update invalidates its cached answer, so the next Predict scores the new values.
feature=127.0.0.1:$(published feature:50052)
printf 'account_id,avg_amount_30d,txn_count_24h,account_age_days\nacct-00042,5.00,40,1\n' >"$work/account.csv"
MESHSERVE_RUN_DIR="$work/run" MESHSERVE_TLS=1 "$MESHSERVE" features load "$work/account.csv" --target "$feature" \
  >"$work/load.log" 2>&1 || { cat "$work/load.log"; fail "meshserve features load through $feature"; }
say "  features load through $feature: $(tail -n 1 "$work/load.log")"
predict "the gateway, after the load" "$gateway" MESHSERVE_TLS=1 MESHSERVE_API_KEY="$key"
[ "$score" != "$before" ] || fail "the score did not change after new features were loaded ($score)"
# REST through Envoy (plaintext listener, content-type application/json: its REST route, to a gateway's REST
# port over TLS) and straight to the gateway's REST port (TLS, checked against the stack's CA): the same scores.
rest_body='{"id": "compose-rest", "inputs": [{"name": "features", "shape": [2, 5], "datatype": "FP32",
  "data": [[25.0, 1, 120.0, 3, 400], [4800.0, 7, 35.0, 40, 2]]}]}'
rest() { # rest LABEL URL [CURL ARGS...]: one REST inference of fraud, its scores and version on stdout
  local label=$1 url=$2
  shift 2
  local answer
  answer=$(curl -fsS --max-time 10 "$@" -H "authorization: Bearer $key" -H 'content-type: application/json' \
    --data "$rest_body" "$url/v2/models/fraud/infer") || fail "REST inference through $label"
  "$PYTHON" - "$label" "$answer" <<'EOF'
import json, sys
label, answer = sys.argv[1], json.loads(sys.argv[2])
(score,) = answer["outputs"]
assert answer["id"] == "compose-rest" and score["name"] == "score" and score["shape"] == [2, 1], answer
assert all(0.0 <= value <= 1.0 for value in score["data"]), answer
print(f"[compose-test]   REST through {label}: scores {score['data']}, fraud v{answer['model_version']}",
      file=sys.stderr)
print(" ".join(f"{value:.6f}" for value in score["data"]), answer["model_version"])
EOF
}
through_envoy=$(rest "Envoy ($envoy)" "http://$envoy") || exit 1
gateway_http=$(published gateway:50056)
direct=$(rest "the gateway (127.0.0.1:$gateway_http)" "https://gateway:$gateway_http" \
  --cacert "$work/run/certs/ca.pem" --resolve "gateway:$gateway_http:127.0.0.1") || exit 1
[ "$through_envoy" = "$direct" ] || fail "REST through Envoy answered $through_envoy, the gateway $direct"

# -- labels -------------------------------------------------------------------------------------------------
phase labels
# A label for the last answer through the gateway's feedback API (TLS, a key with role feedback), then its
# route's quality from the monitor's published port (mTLS, the `admin` certificate): the gateway logged the
# prediction behind its answer, so the label joins it within a few seconds.
labels_key=$(compose exec -T gateway meshserve keys create compose-labels --role feedback 2>/dev/null | tail -n 1)
[ -n "$labels_key" ] || fail "meshserve keys create printed no key"
printf 'prediction_id,label\n%s,1\n' "$prediction_id" >"$work/labels.csv"
MESHSERVE_RUN_DIR="$work/run" MESHSERVE_TLS=1 MESHSERVE_API_KEY="$labels_key" "$MESHSERVE" feedback load \
  "$work/labels.csv" --target "$gateway" >"$work/labels.log" 2>&1 ||
  { cat "$work/labels.log"; fail "meshserve feedback load through $gateway"; }
say "  feedback load through $gateway: $(tail -n 1 "$work/labels.log")"
monitor=127.0.0.1:$(published monitor:50057)
labelled() { # how many labelled predictions `meshserve quality fraud` counts; fails when it does
  MESHSERVE_RUN_DIR="$work/run" MESHSERVE_TLS=1 "$MESHSERVE" quality fraud --target "$monitor" -o json \
    2>"$work/quality.log" |
    "$PYTHON" -c 'import json, sys; print(sum(v["labelled"] for v in json.load(sys.stdin)["variants"]))'
}
deadline=$((SECONDS + 30))
until count=$(labelled) && [ "${count:-0}" -ge 1 ]; do
  [ $SECONDS -lt $deadline ] || fail "meshserve quality through $monitor counts no label after 30s: $(cat "$work/quality.log")"
  sleep 1
done
say "  quality through $monitor: $count labelled prediction(s) on route fraud"

# -- control ------------------------------------------------------------------------------------------------
phase control
# New weights through the first gateway's admin API (TLS with the `admin` certificate, the admin token); the
# second one reads them from Redis (control_poll_s), so both serve them, each asked on its own admin API.
admin() { env MESHSERVE_RUN_DIR="$work/run" MESHSERVE_TLS=1 MESHSERVE_ADMIN_TOKEN_FILE="$work/run/certs/admin-token" \
  "$MESHSERVE" "$@"; }
first=127.0.0.1:$(published gateway:50055)
second=127.0.0.1:$(published gateway-2:50055)
admin canary weights fraud stable=70 canary=30 --admin "$first" >"$work/weights.log" 2>&1 ||
  { cat "$work/weights.log"; fail "meshserve canary weights through $first"; }
weights() { # weights ADMIN: route fraud's weights as that gateway serves them, e.g. canary=30 stable=70
  admin canary status fraud --admin "$1" -o json 2>"$work/status.log" | "$PYTHON" -c '
import json, sys
print(" ".join(sorted("%s=%g" % (v["name"], v["weight"]) for v in json.load(sys.stdin)["variants"])))'
}
for target in "$first" "$second"; do
  start=$SECONDS
  deadline=$((SECONDS + 15))
  until served=$(weights "$target") && [ "$served" = "canary=30 stable=70" ]; do
    [ $SECONDS -lt $deadline ] || fail "$target serves '${served:-}' 15s after the change: $(cat "$work/status.log")"
    sleep 0.2
  done
  say "  $target serves $served (after $((SECONDS - start))s)"
done

# -- scrape -------------------------------------------------------------------------------------------------
phase scrape
deadline=$((SECONDS + 60))
while :; do
  report=$(curl -fsS "http://127.0.0.1:$(published prometheus:9090)/api/v1/targets") || fail "Prometheus's /api/v1/targets"
  if summary=$("$PYTHON" - "$report" <<'EOF'
import json, sys
targets = json.loads(sys.argv[1])["data"]["activeTargets"]
down = [f"{t['labels']['job']}: {t['health']} {t['lastError']}".strip() for t in targets if t["health"] != "up"]
print("; ".join(down) if down or not targets else ", ".join(sorted(t["labels"]["job"] for t in targets)))
sys.exit(1 if down or not targets else 0)
EOF
  ); then
    say "every target up: $summary"
    gateways=$("$PYTHON" -c 'import json, sys
print(sum(t["labels"]["job"] == "gateway" for t in json.loads(sys.argv[1])["data"]["activeTargets"]))' "$report")
    [ "$gateways" = 2 ] || fail "Prometheus scrapes $gateways gateway(s), not both"
    break
  fi
  [ $SECONDS -lt $deadline ] || fail "Prometheus targets not up after 60s: $summary"
  sleep 1
done

# -- failover -----------------------------------------------------------------------------------------------
phase failover
# Predicts through Envoy from 8 callers at once for FAILOVER_S seconds; a third of the way in, gateway-2 is
# killed (SIGKILL: no drain, its calls in flight die with it). Every Predict must succeed: Envoy retries a call
# whose gateway reset or refused it on the other one, and stops choosing the dead one (health checks, outlier
# detection). Each call carries an x-request-id, so Envoy's access log says which gateway answered and how many
# attempts it took.
victim=$(compose ps -q gateway-2)
loaded=0
"$PYTHON" - "$envoy" "$key" "$victim" "${FAILOVER_S:-6}" "$work/failover.json" <<'EOF' || loaded=$?
import asyncio, json, subprocess, sys, time

import grpc

from meshserve.feature.v1 import feature_pb2
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc

address, key, victim, duration, out = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
ok, failed, killed_at = [], [], None


async def caller(stub, worker: int, started: float) -> None:
    n = 0
    while time.monotonic() - started < duration:
        n += 1
        request = gateway_pb2.PredictRequest(route="fraud", instances=[gateway_pb2.Instance(
            entity_key=f"acct-{worker * 7 + n % 7:05d}",
            features={"amount": feature_pb2.Value(double_value=10.0 + n), "merchant_category": feature_pb2.Value(int64_value=3)},
        )])
        request_id = f"failover-{worker}-{n}"
        metadata = (("authorization", f"Bearer {key}"), ("x-request-id", request_id))
        try:
            reply = await stub.Predict(request, metadata=metadata, timeout=10)
            assert 0.0 <= reply.predictions[0].score <= 1.0, reply
            ok.append((time.monotonic(), request_id))
        except grpc.aio.AioRpcError as error:
            failed.append((request_id, f"{error.code().name} {error.details()}"))


async def kill(started: float) -> None:
    global killed_at
    await asyncio.sleep(duration / 3)
    process = await asyncio.create_subprocess_exec("docker", "kill", victim, stdout=subprocess.DEVNULL)
    assert await process.wait() == 0, "docker kill"
    killed_at = time.monotonic()


async def main() -> None:
    started = time.monotonic()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.PredictionServiceStub(channel)
        await asyncio.gather(kill(started), *(caller(stub, worker, started) for worker in range(8)))
    after = [request_id for at, request_id in ok if at > killed_at]
    print(f"[compose-test]   {len(ok) + len(failed)} Predicts through Envoy in {time.monotonic() - started:.1f}s, "
          f"{len(after)} answered after the kill at {killed_at - started:.1f}s; {len(failed)} failed", file=sys.stderr)
    for request_id, error in failed[:5]:
        print(f"[compose-test]     {request_id}: {error}", file=sys.stderr)
    before = [r for at, r in ok if at <= killed_at]
    json.dump({"before": before, "after": after, "failed": [r for r, _ in failed]}, open(out, "w"))
    sys.exit(1 if failed or len(after) < 20 else 0)


asyncio.run(main())
EOF
# Envoy's access log: which gateways answered before the kill, which calls it retried, and how failed ones ended.
compose logs --no-color envoy >"$work/envoy.log" 2>&1
"$PYTHON" - "$work/envoy.log" "$work/failover.json" <<'EOF' || fail "Envoy's access log does not show the calls balanced over both gateways"
import json, sys
ids = json.load(open(sys.argv[2]))
lines = {}
for text in open(sys.argv[1]):
    start = text.find("{")
    if start >= 0 and "failover-" in text:
        line = json.loads(text[start:])
        lines[line["request_id"]] = line
before = {lines[r]["upstream_host"] for r in ids["before"] if r in lines}
retried = [lines[r] for r in ids["before"] + ids["after"] if r in lines and int(lines[r]["attempts"] or 1) > 1]
print(f"[compose-test]   before the kill, answers from {len(before)} gateways ({', '.join(sorted(before))}); "
      f"{len(retried)} call(s) retried on the other one by Envoy", file=sys.stderr)
for request_id in ids["failed"][:5]:
    print(f"[compose-test]     failed {request_id}: {lines.get(request_id)}", file=sys.stderr)
sys.exit(0 if len(before) == 2 else 1)
EOF
[ "$loaded" = 0 ] || fail "Predicts failed through Envoy while gateway-2 died"
