#!/usr/bin/env bash
# The one entry point of the workbench on a PC or a GPU server.
#   ./run-local.sh [start] [--gpu]    start the API (port 58081) and the dashboard (port 58080) with Docker
#                                     Compose when a Docker engine responds, else from .venv until Ctrl-C
#   ./run-local.sh setup              only create or update .venv
#   ./run-local.sh test [ARGS]        set up .venv, then run the whole test suite (ARGS go to pytest)
#   ./run-local.sh build [--gpu]      build the image (Docker)
#   ./run-local.sh logs [ARGS]        show the containers' logs, e.g. `logs -f asr-api` (Docker)
#   ./run-local.sh down [--gpu]       stop and remove the containers (Docker)
#   ./run-local.sh restart [--gpu]    down, then start (Docker)
#   ./run-local.sh gpu-check [ARGS]   run the GPU check (asr gpu-check) in the asr-api container, or in .venv
#   ./run-local.sh remote HOST [...]  forward a server's ports to this PC over SSH (remote --help)
# --gpu adds docker-compose.gpu.yml, which reserves one NVIDIA GPU for the API.
#
# Environment:
#   ASR_RUNNER          auto (default), docker or venv
#   ASR_API_PORT        host port of the API (default 58081)
#   ASR_DASHBOARD_PORT  host port of the dashboard (default 58080)
#   ASR_API_HOST        address the API listens on in .venv mode (default 127.0.0.1)
#   ASR_DASHBOARD_HOST  address the dashboard listens on in .venv mode (default 127.0.0.1)
#   ASR_START_TIMEOUT   seconds to wait for /api/health (default 180)
#   ASR_SKIP_SETUP=1    use .venv as it is, without checking that it matches pyproject.toml
#   ASR_DATA_DIR, ASR_CHECKPOINTS_DIR, ASR_LJSPEECH_PATH, ASR_CONFIG: as for the `asr` command
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV="$ROOT/.venv"
STAMP="$VENV/.asrlib-installed"
DEFAULT_API_PORT=58081
DEFAULT_DASHBOARD_PORT=58080
SERVICE_PIDS=()
SERVICE_NAMES=()

log() { printf '[run-local] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# Sleep in the background, so that a trapped signal is handled at once rather than after the sleep.
PAUSE_PID=""
pause() {
  sleep "$1" &
  PAUSE_PID=$!
  wait "$PAUSE_PID" || true
  PAUSE_PID=""
}

stop_pause() {
  if [ -n "$PAUSE_PID" ]; then
    kill "$PAUSE_PID" 2>/dev/null || true
  fi
}

usage() { sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# ---------------------------------------------------------------------------------------------
# .venv set-up

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  log "Python 3.11 not found; install it or set PYTHON=/path/to/python3.11"
  return 1
}

file_sha256() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1  # macOS
  fi
}

# The stamp records the hash of pyproject.toml, so a changed dependency list reinstalls.
setup_venv() {
  if [ "${ASR_SKIP_SETUP:-0}" = 1 ] && [ -x "$VENV/bin/python" ]; then
    return 0
  fi
  local want
  want=$(file_sha256 "$ROOT/pyproject.toml")
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
    return 0
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    local python
    python=$(find_python)
    log "creating $VENV with $python"
    "$python" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
  fi
  log "installing asrlib and its dependencies into $VENV (torch and torchaudio take a few minutes the first time)"
  (cd "$ROOT" && "$VENV/bin/python" -m pip install --quiet -e '.[dev]')
  echo "$want" > "$STAMP"
}

run_tests() {
  setup_venv
  mkdir -p "$ROOT/test-artifacts"
  local status=0
  (cd "$ROOT" && "$VENV/bin/python" -m pytest "$@") || status=$?
  if [ "$status" -eq 5 ]; then
    log "pytest collected no tests"
  fi
  return "$status"
}

# ---------------------------------------------------------------------------------------------
# Ports: who listens where. ss (Linux), then lsof (macOS), then /proc/net/tcp.

# Print the ids of the processes listening on TCP port $1, and return 1 when none listens.
# A listener that belongs to another user may show no process id unless this runs as root.
port_listener_pids() {
  local port=$1 lines
  if command -v ss >/dev/null 2>&1; then
    lines=$(ss -Hltnp "sport = :$port" 2>/dev/null) || lines=""
    [ -n "$lines" ] || return 1
    printf '%s\n' "$lines" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -un || true
    return 0
  fi
  if command -v lsof >/dev/null 2>&1; then
    lines=$(lsof -nP -iTCP:"$port" -sTCP:LISTEN -t 2>/dev/null) || lines=""
    if [ -n "$lines" ]; then
      printf '%s\n' "$lines" | sort -un
      return 0
    fi
    # lsof lists only this user's processes unless run as root, so fall through to /proc.
  fi
  proc_listener_pids "$port"
}

# Find listeners through /proc: the socket inodes of LISTEN entries (state 0A) for the port in
# /proc/net/tcp and tcp6, then the processes whose open files include one of those sockets.
proc_listener_pids() {
  local port=$1 hex inodes fd link pid
  [ -r /proc/net/tcp ] || return 1
  hex=$(printf '%04X' "$port")
  inodes=$(awk -v hex="$hex" '$4 == "0A" { split($2, local_address, ":"); if (local_address[2] == hex) print $10 }' \
           /proc/net/tcp /proc/net/tcp6 2>/dev/null | sort -u)
  [ -n "$inodes" ] || return 1
  for fd in /proc/[0-9]*/fd/*; do
    link=$(readlink "$fd" 2>/dev/null) || continue
    case $link in
      socket:\[*\])
        if printf '%s\n' "$inodes" | grep -qx "${link//[^0-9]/}"; then
          pid=${fd#/proc/}
          echo "${pid%%/*}"
        fi
        ;;
    esac
  done | sort -un
  return 0
}

port_in_use() {
  port_listener_pids "$1" >/dev/null
}

describe_pid() {
  local pid=$1 command_line=""
  if [ -r "/proc/$pid/cmdline" ]; then
    command_line=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || command_line=""
  fi
  if [ -z "$command_line" ] && command -v ps >/dev/null 2>&1; then
    command_line=$(ps -o command= -p "$pid" 2>/dev/null) || command_line=""
  fi
  command_line=${command_line% }
  if [ "${#command_line}" -gt 160 ]; then
    command_line="${command_line:0:157}..."
  fi
  printf 'pid %s (%s)' "$pid" "${command_line:-command unknown}"
}

# Fail with a message that names the process holding the port, when one is.
require_free_port() {
  local port=$1 what=$2 variable=$3 pids pid holders=""
  pids=$(port_listener_pids "$port") || return 0
  for pid in $pids; do
    holders="${holders:+$holders, }$(describe_pid "$pid")"
  done
  if [ -z "$holders" ]; then
    holders="a process of another user (run as root to see which)"
  fi
  log "port $port for the $what is already in use by $holders"
  log "stop that process, or choose another port with $variable=PORT"
  return 1
}

validate_port() {
  local value=$1 variable=$2
  case $value in
    ''|*[!0-9]*) die "invalid $variable '$value'; expected a port number from 1 to 65535" ;;
  esac
  if [ "$value" -lt 1 ] || [ "$value" -gt 65535 ]; then
    die "invalid $variable '$value'; expected a port number from 1 to 65535"
  fi
}

# Print the HTTP status code of GET http://$1:$2$3, using bash's /dev/tcp so no proxy applies.
http_status() {
  local host=$1 port=$2 path=$3
  (
    exec 3<>"/dev/tcp/$host/$port" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: %s:%s\r\nConnection: close\r\n\r\n' "$path" "$host" "$port" >&3
    IFS=' ' read -r -t 10 _ status _ <&3 || exit 1
    printf '%s\n' "$status"
  ) 2>/dev/null
}

tcp_accepts() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# A service listening on every address is reached through loopback.
client_address() {
  case $1 in
    0.0.0.0|'') echo 127.0.0.1 ;;
    ::|'[::]') echo ::1 ;;
    *) echo "$1" ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# Runner selection

with_timeout() {
  local seconds=$1
  shift
  if command -v timeout >/dev/null 2>&1; then
    timeout "$seconds" "$@"
  else
    "$@"
  fi
}

docker_engine_responds() {
  command -v docker >/dev/null 2>&1 && with_timeout 20 docker info >/dev/null 2>&1
}

# Set COMPOSE to the Compose command: the v2 plugin, else the standalone docker-compose.
find_compose() {
  if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
  else
    return 1
  fi
}

select_runner() {
  local runner=${ASR_RUNNER:-auto}
  case $runner in
    docker)
      docker_engine_responds || die "ASR_RUNNER=docker, but no Docker engine responds ('docker info' failed); start Docker or use ASR_RUNNER=venv"
      find_compose || die "ASR_RUNNER=docker, but neither 'docker compose' nor 'docker-compose' is installed"
      echo docker
      ;;
    venv) echo venv ;;
    auto)
      if docker_engine_responds && find_compose; then
        echo docker
      else
        echo venv
      fi
      ;;
    *) die "invalid ASR_RUNNER '$runner'; use auto, docker or venv" ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# Docker Compose

compose() {
  local files=(-f "$ROOT/docker-compose.yml")
  if [ "$USE_GPU" = 1 ]; then
    files+=(-f "$ROOT/docker-compose.gpu.yml")
  fi
  find_compose || die "neither 'docker compose' nor 'docker-compose' is installed"
  (cd "$ROOT" && "${COMPOSE[@]}" "${files[@]}" "$@")
}

export_build_ids() {
  ASR_UID=${ASR_UID:-$(id -u)}
  ASR_GID=${ASR_GID:-$(id -g)}
  export ASR_UID ASR_GID
}

announce_urls() {
  local api_host=$1 api_port=$2 dashboard_host=$3 dashboard_port=$4
  log "API:       http://$api_host:$api_port/api (health: /api/health, reference: /docs)"
  log "dashboard: http://$dashboard_host:$dashboard_port/"
}

wait_for_api_health() {
  local host=$1 port=$2 timeout=$3 pid=${4:-} waited=0
  log "waiting for http://$host:$port/api/health (at most $timeout s)"
  while [ "$(http_status "$host" "$port" /api/health || true)" != 200 ]; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      log "the API exited before /api/health responded; its messages are above"
      return 1
    fi
    if [ "$waited" -ge "$timeout" ]; then
      log "timed out after $timeout s waiting for /api/health on port $port"
      return 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
}

docker_start() {
  local api_port=$1 dashboard_port=$2
  export_build_ids
  mkdir -p "$ROOT/data" "$ROOT/checkpoints"
  if [ -z "$(compose ps -q 2>/dev/null)" ]; then
    require_free_port "$api_port" API ASR_API_PORT || exit 1
    require_free_port "$dashboard_port" dashboard ASR_DASHBOARD_PORT || exit 1
  fi
  if [ "$USE_GPU" = 1 ]; then
    log "starting the containers with docker-compose.gpu.yml (one NVIDIA GPU for the API)"
  else
    log "starting the containers"
  fi
  compose up -d
  if ! wait_for_api_health 127.0.0.1 "$api_port" "$START_TIMEOUT"; then
    compose ps >&2 || true
    die "the API container is not healthy; see ./run-local.sh logs asr-api"
  fi
  announce_urls 127.0.0.1 "$api_port" 127.0.0.1 "$dashboard_port"
  log "the containers run in the background: ./run-local.sh logs -f, ./run-local.sh down"
}

# ---------------------------------------------------------------------------------------------
# .venv mode: both services as child processes, each in its own process group

# Run "$@" in dashboards/: Voila reads voila.json or voila.py from its working directory.
in_dashboards() {
  cd "$ROOT/dashboards"
  exec "$@"
}

# Start "$@" in the background in a new process group, so that stopping it reaches its children.
start_service() {
  local name=$1
  shift
  set -m
  "$@" &
  SERVICE_PIDS+=("$!")
  SERVICE_NAMES+=("$name")
  set +m
  log "started the $name (pid $!)"
}

stop_services() {
  local pid watchdog
  stop_pause
  [ "${#SERVICE_PIDS[@]}" -gt 0 ] || return 0
  log "stopping the API and the dashboard"
  for pid in "${SERVICE_PIDS[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  # Anything still running after the grace period gets SIGKILL.
  set -m
  (
    sleep "${ASR_STOP_TIMEOUT:-20}"
    for pid in "${SERVICE_PIDS[@]}"; do
      kill -KILL -- "-$pid" 2>/dev/null || true
    done
  ) &
  watchdog=$!
  set +m
  for pid in "${SERVICE_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
    kill -KILL -- "-$pid" 2>/dev/null || true  # members of the group that outlived its leader
  done
  kill -KILL -- "-$watchdog" 2>/dev/null || true
  wait "$watchdog" 2>/dev/null || true
  SERVICE_PIDS=()
  log "stopped"
}

# A second Ctrl-C during the stop is ignored; the SIGKILL after the grace period still comes.
on_signal() {
  local signal=$1
  trap '' INT TERM
  stop_services
  [ "$signal" = INT ] && exit 130
  exit 143
}

venv_start() {
  local api_port=$1 dashboard_port=$2
  local api_host=${ASR_API_HOST:-127.0.0.1} dashboard_host=${ASR_DASHBOARD_HOST:-127.0.0.1}
  local api_client dashboard_client notebook="$ROOT/dashboards/app.ipynb"

  require_free_port "$api_port" API ASR_API_PORT || exit 1
  require_free_port "$dashboard_port" dashboard ASR_DASHBOARD_PORT || exit 1
  setup_venv
  [ -x "$VENV/bin/uvicorn" ] || die "uvicorn is not installed in $VENV; add it to pyproject.toml and run ./run-local.sh setup"
  [ -x "$VENV/bin/voila" ] || die "voila is not installed in $VENV; add it to pyproject.toml and run ./run-local.sh setup"
  [ -f "$notebook" ] || die "the dashboard notebook $notebook is missing"

  # The same folders and variables as the containers.
  export ASR_DATA_DIR=${ASR_DATA_DIR:-$ROOT/data}
  export ASR_CHECKPOINTS_DIR=${ASR_CHECKPOINTS_DIR:-$ROOT/checkpoints}
  export ASR_LJSPEECH_PATH=${ASR_LJSPEECH_PATH:-$ASR_DATA_DIR/ljspeech}
  mkdir -p "$ASR_DATA_DIR" "$ASR_CHECKPOINTS_DIR"
  api_client=$(client_address "$api_host")
  dashboard_client=$(client_address "$dashboard_host")
  # The dashboard calls the API on loopback, which no proxy can reach.
  if [ -n "${HTTP_PROXY:-}${HTTPS_PROXY:-}${http_proxy:-}${https_proxy:-}" ]; then
    local no_proxy_list="127.0.0.1,localhost,::1"
    export NO_PROXY="$no_proxy_list${NO_PROXY:+,$NO_PROXY}" no_proxy="$no_proxy_list${no_proxy:+,$no_proxy}"
  fi

  trap 'on_signal INT' INT
  trap 'on_signal TERM' TERM
  trap 'stop_services' EXIT

  log "data: $ASR_DATA_DIR, checkpoints: $ASR_CHECKPOINTS_DIR"
  start_service API "$VENV/bin/uvicorn" asrlib.api.app:app --app-dir "$ROOT" --host "$api_host" --port "$api_port"
  if ! wait_for_api_health "$api_client" "$api_port" "$START_TIMEOUT" "${SERVICE_PIDS[0]}"; then
    exit 1
  fi

  # port_retries=0: a taken port is an error instead of a silent move to the next port.
  start_service dashboard in_dashboards env BACKEND_HOST="$api_client" BACKEND_PORT="$api_port" \
    "$VENV/bin/voila" app.ipynb --no-browser --port="$dashboard_port" \
    --Voila.ip="$dashboard_host" --Voila.port_retries=0
  local waited=0
  until tcp_accepts "$dashboard_client" "$dashboard_port"; do
    kill -0 "${SERVICE_PIDS[1]}" 2>/dev/null || die "the dashboard exited at start; its messages are above"
    [ "$waited" -lt "$START_TIMEOUT" ] || die "timed out after $START_TIMEOUT s waiting for the dashboard on port $dashboard_port"
    sleep 1
    waited=$((waited + 1))
  done

  announce_urls "$api_client" "$api_port" "$dashboard_client" "$dashboard_port"
  log "press Ctrl-C to stop both"

  local index
  while true; do
    for index in "${!SERVICE_PIDS[@]}"; do
      if ! kill -0 "${SERVICE_PIDS[$index]}" 2>/dev/null; then
        log "the ${SERVICE_NAMES[$index]} exited on its own; stopping the other service"
        exit 1
      fi
    done
    pause 1
  done
}

venv_only_message() {
  die "'$1' needs Docker, and no Docker engine responds. From .venv the services run in the foreground of ./run-local.sh: its terminal shows their logs, and Ctrl-C stops them."
}

# ---------------------------------------------------------------------------------------------
# remote: SSH port forwarding from a PC to a server

remote_usage() {
  cat <<'USAGE'
./run-local.sh remote HOST [--port N] [--identity FILE] [--start] [--no-gpu] [--dir PATH] [-o OPTION]... [-F FILE]

Open an SSH master connection (ControlMaster) to HOST ([user@]host), forward the server's
dashboard and API ports to the same ports on this PC's 127.0.0.1, and keep them open until
Ctrl-C or SIGTERM, which close the forwarding and the master connection.

  --port N         SSH port of the server (default: ssh's, usually 22)
  --identity FILE  private key for the login
  --start          first start the containers on the server: in --dir, ASR_RUNNER=docker ./run-local.sh start --gpu
  --no-gpu         with --start, leave out docker-compose.gpu.yml
  --dir PATH       the repository on the server (default: asr-workbench, in the login's home folder)
  -o OPTION        an ssh option, e.g. -o ProxyJump=gateway (repeatable)
  -F FILE          the ssh configuration file

Environment: ASR_DASHBOARD_PORT and ASR_API_PORT set the local ports (58080, 58081);
ASR_REMOTE_DASHBOARD_PORT and ASR_REMOTE_API_PORT the server's (the same by default).
USAGE
}

# Quote a path for the remote shell, keeping a leading ~/ so that it expands there.
# shellcheck disable=SC2088  # the ~ is meant for the remote shell, unexpanded here
remote_path_word() {
  case $1 in
    '~') printf '~' ;;
    '~/'*) printf '~/%q' "${1#\~/}" ;;
    *) printf '%q' "$1" ;;
  esac
}

remote_cleanup() {
  local status=$? waited=0
  trap - EXIT
  trap '' INT TERM  # finish closing the connection even on a second Ctrl-C
  stop_pause
  if [ -n "${CONTROL_PATH:-}" ] && [ -S "$CONTROL_PATH" ]; then
    log "closing the port forwarding and the SSH master connection"
    ssh -S "$CONTROL_PATH" -O exit "$REMOTE_HOST" 2>/dev/null || true
  fi
  # The master closes its listening sockets as it exits.
  while { [ -n "${CONTROL_PATH:-}" ] && [ -S "$CONTROL_PATH" ]; } ||
        { [ "${FORWARDING:-0}" = 1 ] && { port_in_use "$LOCAL_DASHBOARD_PORT" || port_in_use "$LOCAL_API_PORT"; }; }; do
    [ "$waited" -lt 50 ] || { log "the SSH master connection did not close within 5 s"; break; }
    sleep 0.1
    waited=$((waited + 1))
  done
  if [ -n "${CONTROL_DIR:-}" ]; then
    rm -rf "$CONTROL_DIR"
  fi
  exit "$status"
}

remote_main() {
  local host="" ssh_port="" identity="" start=0 gpu=1 dir="asr-workbench"
  local ssh_options=()
  while [ "$#" -gt 0 ]; do
    case $1 in
      -h|--help) remote_usage; return 0 ;;
      --port) [ "$#" -ge 2 ] || die "--port needs a value"; ssh_port=$2; shift 2 ;;
      --identity) [ "$#" -ge 2 ] || die "--identity needs a file"; identity=$2; shift 2 ;;
      --start) start=1; shift ;;
      --no-gpu) gpu=0; shift ;;
      --dir) [ "$#" -ge 2 ] || die "--dir needs a path"; dir=$2; shift 2 ;;
      -o) [ "$#" -ge 2 ] || die "-o needs an ssh option"; ssh_options+=(-o "$2"); shift 2 ;;
      -F) [ "$#" -ge 2 ] || die "-F needs a file"; ssh_options+=(-F "$2"); shift 2 ;;
      -*) die "unknown option '$1' for remote; see ./run-local.sh remote --help" ;;
      *)
        [ -z "$host" ] || die "remote takes one HOST, got '$host' and '$1'"
        host=$1
        shift
        ;;
    esac
  done
  [ -n "$host" ] || { remote_usage >&2; die "remote needs a HOST"; }
  if [ -n "$ssh_port" ]; then
    validate_port "$ssh_port" --port
    ssh_options+=(-p "$ssh_port")
  fi
  if [ -n "$identity" ]; then
    [ -r "$identity" ] || die "identity file '$identity' is not readable"
    ssh_options+=(-i "$identity" -o IdentitiesOnly=yes)
  fi
  command -v ssh >/dev/null 2>&1 || die "ssh is not installed"

  LOCAL_DASHBOARD_PORT=${ASR_DASHBOARD_PORT:-$DEFAULT_DASHBOARD_PORT}
  LOCAL_API_PORT=${ASR_API_PORT:-$DEFAULT_API_PORT}
  local remote_dashboard_port=${ASR_REMOTE_DASHBOARD_PORT:-$DEFAULT_DASHBOARD_PORT}
  local remote_api_port=${ASR_REMOTE_API_PORT:-$DEFAULT_API_PORT}
  validate_port "$LOCAL_DASHBOARD_PORT" ASR_DASHBOARD_PORT
  validate_port "$LOCAL_API_PORT" ASR_API_PORT
  validate_port "$remote_dashboard_port" ASR_REMOTE_DASHBOARD_PORT
  validate_port "$remote_api_port" ASR_REMOTE_API_PORT
  require_free_port "$LOCAL_DASHBOARD_PORT" "forwarded dashboard" ASR_DASHBOARD_PORT || exit 1
  require_free_port "$LOCAL_API_PORT" "forwarded API" ASR_API_PORT || exit 1

  REMOTE_HOST=$host
  FORWARDING=0
  # A short folder of its own: the socket path must fit in 104 bytes on macOS.
  CONTROL_DIR=$(mktemp -d /tmp/asr-ssh.XXXXXX)
  CONTROL_PATH="$CONTROL_DIR/master"
  trap remote_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  log "opening an SSH master connection to $host (control socket $CONTROL_PATH)"
  # -f: go to the background after authentication, so that password prompts still work.
  # The master writes its messages to a log file, which is shown when it fails.
  if ! ssh "${ssh_options[@]+"${ssh_options[@]}"}" -f -N -M -n \
      -o ControlMaster=yes -o "ControlPath=$CONTROL_PATH" -o ControlPersist=no \
      -o ExitOnForwardFailure=yes -o ServerAliveInterval=15 -o ServerAliveCountMax=4 \
      -E "$CONTROL_DIR/ssh.log" "$host"; then
    cat "$CONTROL_DIR/ssh.log" >&2 2>/dev/null || true
    die "could not connect to $host over SSH"
  fi

  local mux=(ssh "${ssh_options[@]+"${ssh_options[@]}"}" -S "$CONTROL_PATH" -o ControlMaster=no)
  if [ "$start" = 1 ]; then
    local remote_command
    remote_command="cd $(remote_path_word "$dir") && ASR_RUNNER=docker ASR_API_PORT=$remote_api_port"
    remote_command+=" ASR_DASHBOARD_PORT=$remote_dashboard_port ./run-local.sh start"
    [ "$gpu" = 1 ] && remote_command+=" --gpu"
    log "starting the workbench on $host: $remote_command"
    "${mux[@]}" -n "$host" "$remote_command" || die "starting the workbench on $host failed; see the messages above"
  fi

  FORWARDING=1
  if ! "${mux[@]}" -O forward \
      -L "127.0.0.1:$LOCAL_DASHBOARD_PORT:127.0.0.1:$remote_dashboard_port" \
      -L "127.0.0.1:$LOCAL_API_PORT:127.0.0.1:$remote_api_port" "$host"; then
    die "port forwarding to $host failed"
  fi
  log "forwarding $host's ports $remote_dashboard_port and $remote_api_port to 127.0.0.1"
  announce_urls 127.0.0.1 "$LOCAL_API_PORT" 127.0.0.1 "$LOCAL_DASHBOARD_PORT"
  log "press Ctrl-C to close the forwarding (the server's containers keep running)"

  while "${mux[@]}" -O check "$host" 2>/dev/null; do
    pause 5
  done
  cat "$CONTROL_DIR/ssh.log" >&2 2>/dev/null || true
  die "the SSH connection to $host ended"
}

# ---------------------------------------------------------------------------------------------

main() {
  cd "$ROOT"
  local command=${1:-start}
  [ "$#" -eq 0 ] || shift
  case $command in
    -h|--help|help) usage; return 0 ;;
    setup) setup_venv; return ;;
    test) run_tests "$@"; return ;;
    remote) remote_main "$@"; return ;;
    start|build|logs|down|restart|gpu-check) ;;
    *) die "unknown command '$command'; see ./run-local.sh --help" ;;
  esac

  USE_GPU=0
  local args=()
  while [ "$#" -gt 0 ]; do
    case $1 in
      --gpu) USE_GPU=1 ;;
      *) args+=("$1") ;;
    esac
    shift
  done
  local api_port=${ASR_API_PORT:-$DEFAULT_API_PORT} dashboard_port=${ASR_DASHBOARD_PORT:-$DEFAULT_DASHBOARD_PORT}
  validate_port "$api_port" ASR_API_PORT
  validate_port "$dashboard_port" ASR_DASHBOARD_PORT
  START_TIMEOUT=${ASR_START_TIMEOUT:-180}

  local runner
  runner=$(select_runner)
  if [ "$runner" = venv ]; then
    case $command in
      start)
        [ "$USE_GPU" = 0 ] || log "--gpu applies to Docker only. From .venv, PyTorch uses a GPU when it detects one."
        venv_start "$api_port" "$dashboard_port"
        ;;
      gpu-check) setup_venv; "$VENV/bin/python" -m asrlib.gpu "${args[@]+"${args[@]}"}" ;;
      *) venv_only_message "$command" ;;
    esac
    return
  fi

  find_compose
  case $command in
    start) docker_start "$api_port" "$dashboard_port" ;;
    build) export_build_ids; compose build "${args[@]+"${args[@]}"}" ;;
    logs) compose logs "${args[@]+"${args[@]}"}" ;;
    down) compose down "${args[@]+"${args[@]}"}" ;;
    restart) compose down; docker_start "$api_port" "$dashboard_port" ;;
    gpu-check)
      if [ -n "$(compose ps -q asr-api 2>/dev/null)" ]; then
        compose exec asr-api python -m asrlib.gpu "${args[@]+"${args[@]}"}"
      else
        compose run --rm --no-deps asr-api python -m asrlib.gpu "${args[@]+"${args[@]}"}"
      fi
      ;;
  esac
}

# Sourcing the script (as the tests do) defines the functions and runs nothing.
if ! (return 0 2>/dev/null); then
  main "$@"
fi
