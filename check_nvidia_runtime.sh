#!/usr/bin/env bash
# Check that this host can give an NVIDIA GPU to a Docker container, as docker-compose.gpu.yml does.
#   ./check_nvidia_runtime.sh [--image IMAGE] [--no-smoke]
# Checks, in order: the NVIDIA driver (nvidia-smi), the NVIDIA Container Toolkit (nvidia-ctk,
# nvidia-container-runtime and the nvidia-container-runtime-hook that `docker run --gpus` calls),
# Docker's runtime configuration (/etc/docker/daemon.json and the runtimes `docker info` lists),
# and, when a Docker engine responds, `docker run --rm --gpus all IMAGE nvidia-smi`. The smoke test
# also runs the GPU check of `asr gpu-check` in the workbench image when asr-workbench:gpu or :latest exists.
# Exit status: 0 when every required piece works, 1 when one is missing or fails.
# Environment: DOCKER_DAEMON_JSON (default /etc/docker/daemon.json), ASR_SMOKE_IMAGE (default ubuntu).
set -euo pipefail

DAEMON_JSON=${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}
SMOKE_IMAGE=${ASR_SMOKE_IMAGE:-ubuntu}
RUN_SMOKE=1
PROBLEMS=0

say() { printf '[check-nvidia] %s\n' "$*"; }
ok() { say "ok: $*"; }
warn() { say "warning: $*"; }
problem() {
  say "MISSING: $*"
  PROBLEMS=$((PROBLEMS + 1))
}

with_timeout() {
  local seconds=$1
  shift
  if command -v timeout >/dev/null 2>&1; then
    timeout "$seconds" "$@"
  else
    "$@"
  fi
}

check_driver() {
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    problem "nvidia-smi not found: install the NVIDIA driver for this GPU (the driver package ships nvidia-smi)"
    return
  fi
  local gpus
  if ! gpus=$(with_timeout 30 nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader 2>&1); then
    problem "nvidia-smi failed, so the driver is not loaded or detects no GPU: $gpus"
    return
  fi
  ok "NVIDIA driver and GPUs (index, name, driver, memory):"
  printf '%s\n' "$gpus" | sed 's/^/    /'
}

check_toolkit() {
  local found=0 tool version
  for tool in nvidia-ctk nvidia-container-runtime nvidia-container-cli; do
    if command -v "$tool" >/dev/null 2>&1; then
      version=$("$tool" --version 2>/dev/null | head -n 1) || version="version unknown"
      ok "$tool: ${version:-version unknown}"
      found=1
    fi
  done
  if [ "$found" = 0 ]; then
    problem "NVIDIA Container Toolkit not found (no nvidia-ctk, nvidia-container-runtime or nvidia-container-cli): install the package nvidia-container-toolkit from NVIDIA's repository"
  fi
  # Docker's --gpus and Compose's device reservations call this hook, which Docker looks up in PATH.
  if command -v nvidia-container-runtime-hook >/dev/null 2>&1; then
    ok "nvidia-container-runtime-hook: $(command -v nvidia-container-runtime-hook)"
  else
    problem "nvidia-container-runtime-hook not found in PATH: 'docker run --gpus' and docker-compose.gpu.yml need it (package nvidia-container-toolkit)"
  fi
}

check_daemon_json() {
  if [ ! -e "$DAEMON_JSON" ]; then
    warn "$DAEMON_JSON does not exist, so no 'nvidia' runtime is registered; --gpus works without it, but 'sudo nvidia-ctk runtime configure --runtime=docker' and a Docker restart add it"
    return
  fi
  if [ ! -r "$DAEMON_JSON" ]; then
    warn "$DAEMON_JSON is not readable by this user; run as root to check it"
    return
  fi
  if grep -q '"nvidia"' "$DAEMON_JSON" && grep -q 'nvidia-container-runtime' "$DAEMON_JSON"; then
    ok "$DAEMON_JSON registers the nvidia runtime"
  else
    warn "$DAEMON_JSON registers no 'nvidia' runtime; 'sudo nvidia-ctk runtime configure --runtime=docker' and a Docker restart add it"
  fi
  if grep -q '"default-runtime"' "$DAEMON_JSON"; then
    say "info: $DAEMON_JSON sets $(grep -o '"default-runtime"[^,}]*' "$DAEMON_JSON")"
  fi
}

# Set DOCKER_READY=1 when a Docker engine responds.
check_docker() {
  DOCKER_READY=0
  if ! command -v docker >/dev/null 2>&1; then
    problem "docker not found: install Docker Engine (with the Compose plugin) to run the workbench's containers"
    return
  fi
  local runtimes
  # shellcheck disable=SC2016  # a Go template for docker, not a shell expansion
  if ! runtimes=$(with_timeout 20 docker info --format '{{range $name, $runtime := .Runtimes}}{{$name}} {{end}}' 2>&1); then
    problem "no Docker engine responds ('docker info' failed): start it (sudo systemctl start docker) and check that this user may use it (the docker group): ${runtimes##*$'\n'}"
    return
  fi
  DOCKER_READY=1
  ok "Docker engine responds, runtimes: ${runtimes:-none listed}"
  case " $runtimes " in
    *" nvidia "*) ok "Docker lists the nvidia runtime" ;;
    *) warn "Docker lists no nvidia runtime; --gpus still works through the hook, 'runtime: nvidia' does not" ;;
  esac
  if docker compose version >/dev/null 2>&1; then
    ok "$(docker compose version | head -n 1)"
  elif command -v docker-compose >/dev/null 2>&1; then
    ok "$(docker-compose version | head -n 1) (standalone; docker-compose.gpu.yml needs 1.28 or newer)"
  else
    problem "Docker Compose not found: install the Compose plugin (docker compose) or docker-compose"
  fi
}

smoke_test() {
  if [ "$RUN_SMOKE" = 0 ]; then
    say "skipped the container smoke test (--no-smoke)"
    return
  fi
  if [ "$DOCKER_READY" = 0 ]; then
    say "skipped the container smoke test: no Docker engine responds"
    return
  fi
  say "running: docker run --rm --gpus all $SMOKE_IMAGE nvidia-smi"
  if with_timeout 600 docker run --rm --gpus all "$SMOKE_IMAGE" nvidia-smi; then
    ok "a container can use the GPU"
  else
    problem "'docker run --rm --gpus all $SMOKE_IMAGE nvidia-smi' failed: see Docker's message above"
    return
  fi
  local image
  for image in asr-workbench:gpu asr-workbench:latest; do
    if docker image inspect "$image" >/dev/null 2>&1; then
      say "running: docker run --rm --gpus all $image python -m asrlib.gpu"
      if with_timeout 600 docker run --rm --gpus all "$image" python -m asrlib.gpu; then
        ok "PyTorch in $image computes on the GPU"
      else
        problem "the GPU check (python -m asrlib.gpu) failed in $image: see its message above"
      fi
      return
    fi
  done
  say "info: no asr-workbench image yet; after './run-local.sh build --gpu', run this again to check PyTorch in it"
}

main() {
  while [ "$#" -gt 0 ]; do
    case $1 in
      --image) [ "$#" -ge 2 ] || { say "--image needs an image name"; exit 2; }; SMOKE_IMAGE=$2; shift 2 ;;
      --no-smoke) RUN_SMOKE=0; shift ;;
      -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) say "unknown argument '$1'; see --help"; exit 2 ;;
    esac
  done

  check_driver
  check_toolkit
  check_daemon_json
  check_docker
  smoke_test

  if [ "$PROBLEMS" -gt 0 ]; then
    say "$PROBLEMS problem(s) found: fix the MISSING items above"
    exit 1
  fi
  say "this host can run docker-compose.gpu.yml"
}

main "$@"
