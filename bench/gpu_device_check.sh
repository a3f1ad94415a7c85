#!/usr/bin/env bash
# GPU device check: `asr gpu-check`, a 200-step bf16 training of the `small` preset, and the
# training throughput benchmark of `small` in bf16 with 4 DataLoader workers, without and with
# torch.compile. Outputs go to $OUT when it is set, else to ./bench-out.
#
# Python environment, first that works:
#   1. .venv, or else python3.11 -m venv .venv && .venv/bin/pip install -e .
#      (needs Python 3.11 and a package index)
#   2. the machine's python3 with its own torch, plus the wheels in build/device-carry/wheels,
#      installed into a temporary folder on PYTHONPATH. This is the route on the H200 machines
#      this check was written for, which run Python 3.12 and reach no package index.
# Clips: $ASR_BENCH_DATA, ../shared/data/ljspeech-mini, or build/device-carry/ljspeech-mini-flac
# restored to WAV. `python bench/device_files.py pack` fills build/device-carry on a machine with
# network access; copy that folder along with the repository (name it in the copy's carry list).
#
# The stages share a budget of BUDGET_S seconds (default 470, under 8 minutes). Each stage gets at
# most its own limit and what is left of the budget, and a stage that fails does not stop the next.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${OUT:-$REPO/bench-out}
BUDGET_S=${BUDGET_S:-470}
CARRY=$REPO/build/device-carry
STARTED=$SECONDS
export PYTHONUNBUFFERED=1

SUMMARY_FILE=$OUT_DIR/summary.txt
PY=""
DATA=""
FAILED=0  # set to 1 by the first stage that fails or is skipped

# record LINE: add a line to the timings summary. A file, because main runs in a pipeline's subshell.
record() {
    echo "$1" >>"$SUMMARY_FILE"
}

# run_stage NAME LIMIT_S COMMAND...: run COMMAND (a program, not a shell function) under a time
# limit and record its exit status.
run_stage() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - (SECONDS - STARTED)))
    if ((left < 30)); then
        record "$name: skipped, only ${left} s of the ${BUDGET_S} s budget left"
        echo "=== $name: skipped, only ${left} s of the budget left"
        FAILED=1
        return 1
    fi
    ((limit > left)) && limit=$left
    echo "=== $name (limit ${limit} s, $((SECONDS - STARTED)) s into the check)"
    local stage_started=$SECONDS
    # SIGINT first: `asr train` then saves a checkpoint and stops, and the benchmark has already
    # printed one line per finished loop.
    timeout --signal=INT --kill-after=20 "$limit" "$@"
    local status=$?
    local line="$name: exit status $status after $((SECONDS - stage_started)) s"
    ((status == 124)) && line+=", stopped at its ${limit} s limit"
    record "$line"
    ((status == 0)) || FAILED=1
    return "$status"
}

setup_venv() {
    # An existing .venv (a developer's machine) is used as it is, never rebuilt.
    if [[ ! -x $REPO/.venv/bin/python ]]; then
        command -v python3.11 >/dev/null || return 1
        python3.11 -m venv "$REPO/.venv" || return 1
        "$REPO/.venv/bin/pip" install --quiet --retries 1 --timeout 20 -e "$REPO" || return 1
    fi
    PY=$REPO/.venv/bin/python
}

setup_offline() {
    PY=$(command -v python3) || return 1
    local site=/tmp/asr-device-site
    if compgen -G "$CARRY/wheels/*.whl" >/dev/null; then
        "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" "$CARRY"/wheels/*.whl || return 1
    fi
    export PYTHONPATH="$site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
}

check_python() {
    "$PY" -c 'import sys, torch, torchaudio, av, soundfile, jiwer, yaml, asrlib.cli, asrlib.training.trainer
print(f"python {sys.version.split()[0]} at {sys.executable}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"torchaudio {torchaudio.__version__}; GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}")'
}

setup_python() {
    if setup_venv && check_python; then
        return 0
    fi
    echo "no Python 3.11 virtual environment with a package index; using the machine's python3 and carried wheels"
    if setup_offline && check_python; then
        return 0
    fi
    echo "error: no Python with torch, torchaudio, av, soundfile, jiwer and pyyaml; run" \
        "'python bench/device_files.py pack' where pip has network access and carry build/device-carry"
    return 1
}

find_data() {
    local candidate
    for candidate in "${ASR_BENCH_DATA:-}" "$REPO/../shared/data/ljspeech-mini"; do
        if [[ -n $candidate && -f $candidate/metadata.csv ]]; then
            DATA=$candidate
            return 0
        fi
    done
    if [[ -d $CARRY/ljspeech-mini-flac ]]; then
        "$PY" "$REPO/bench/device_files.py" unpack "$CARRY/ljspeech-mini-flac" /tmp/ljspeech-mini || return 1
        DATA=/tmp/ljspeech-mini
        return 0
    fi
    echo "error: no clips found; set ASR_BENCH_DATA or carry build/device-carry (bench/device_files.py pack)"
    return 1
}

main() {
    cd "$REPO" || return 1
    echo "device check started $(date -u +%Y-%m-%dT%H:%M:%SZ) in $REPO, outputs in $OUT_DIR, budget ${BUDGET_S} s"
    nvidia-smi --query-gpu=name,driver_version,memory.total,mig.mode.current --format=csv || true

    local setup_started=$SECONDS
    setup_python || return 1
    find_data || return 1
    record "setup: $((SECONDS - setup_started)) s; clips in $DATA"

    # bash -c, so that only the report and not run_stage's own lines goes into the JSON file.
    # shellcheck disable=SC2016 # $0 and $1 are expanded by the inner bash
    run_stage "asr gpu-check" 60 bash -c '"$0" -m asrlib.cli gpu-check --json >"$1"' "$PY" "$OUT_DIR/gpu-check.json"
    cat "$OUT_DIR/gpu-check.json"

    local runs cache
    runs=$(mktemp -d /tmp/asr-device-runs.XXXXXX)
    cache=$(mktemp -d /tmp/asr-feature-cache.XXXXXX)
    # Workers and the on-disk feature cache keep the GPU busy once the first epoch is cached.
    # A 50-step learning-rate warm-up lets the loss fall within 200 steps.
    run_stage "train small bf16, 200 steps" 120 "$PY" -m asrlib.cli train --preset small --dataset "$DATA" \
        --run-id device-small-bf16 --checkpoints "$runs" --set training.max_steps=200 \
        --set training.warmup_steps=50 --set training.precision=bf16 --set training.device=cuda \
        --set data.num_workers=4 --set data.cache_features=true --set "data.feature_cache_dir=$cache"
    if [[ -f $runs/device-small-bf16/metrics.jsonl ]]; then
        cp "$runs/device-small-bf16/metrics.jsonl" "$OUT_DIR/train-small-bf16-metrics.jsonl"
        grep '"event": "step"' "$runs/device-small-bf16/metrics.jsonl" | sed -n '1p;$p'
    fi

    local bench=("$PY" bench/train_throughput.py --presets small --device cuda --precision bf16 --num-workers 4
        --data "$DATA")
    run_stage "benchmark small bf16" 120 "${bench[@]}" --json "$OUT_DIR/bench-small-bf16.json"
    # The Conformer recompiles for most new batch shapes, so the compiled run measures fewer steps.
    run_stage "benchmark small bf16, torch.compile" 240 "${bench[@]}" --compile --warmup-steps 3 --steps 6 \
        --json "$OUT_DIR/bench-small-bf16-compile.json"
    return "$FAILED"
}

mkdir -p "$OUT_DIR"
: >"$SUMMARY_FILE"
main 2>&1 | tee "$OUT_DIR/device-check.log"
status=${PIPESTATUS[0]}
record "total: $((SECONDS - STARTED)) s of the ${BUDGET_S} s budget; exit status $status"
echo "=== timings"
cat "$SUMMARY_FILE"
exit "$status"
