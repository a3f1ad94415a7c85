#!/usr/bin/env bash
# The one entry point of the workbench on a local machine.
#   ./run-local.sh          set up .venv if needed, then start the workbench
#   ./run-local.sh setup    only create or update .venv
#   ./run-local.sh test     set up, then run the whole test suite (extra arguments go to pytest)
set -euo pipefail

cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
STAMP="$VENV/.asrlib-installed"

log() { printf '[run-local] %s\n' "$*" >&2; }

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

# The stamp records the hash of pyproject.toml, so a changed dependency list reinstalls.
setup_venv() {
  local want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
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
  "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
  echo "$want" > "$STAMP"
}

run_tests() {
  setup_venv
  mkdir -p test-artifacts
  local status=0
  "$VENV/bin/python" -m pytest "$@" || status=$?
  if [ "$status" -eq 5 ]; then
    log "pytest collected no tests"
  fi
  return "$status"
}

start_workbench() {
  setup_venv
  cat >&2 <<MSG
[run-local] The environment is ready in $VENV. Next steps:
  source .venv/bin/activate
  asr dataset demo                     # synthesise a small speech dataset with espeak-ng
  asr train --preset tiny --dataset demo --set training.max_steps=600
  asr transcribe checkpoints/<run_id> some.wav
MSG
}

command=${1:-start}
case "$command" in
  start) start_workbench ;;
  setup) setup_venv ;;
  test) shift; run_tests "$@" ;;
  -h|--help|help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) log "unknown command '$command'; use start, setup or test"; exit 2 ;;
esac
