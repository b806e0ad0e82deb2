#!/usr/bin/env bash
# Proves the CUDA path in one go: the zoo through the suite on the transformers backend on one GPU
# (cold cache, wall time), then - on a machine with two or more GPUs - the same run spread over two
# pytest-xdist workers with `--gpus-per-worker 1`, and a check from the records that each worker used
# its own GPU and that the reference was generated once.
#
# Usage (repo root):  benchmarks/gpu_check.sh [OUT_DIR]
#   PYTHON=python3 by default; the plugin is loaded from plugins/ (no install needed), its
#   dependencies must be importable. Results: OUT_DIR/summary.txt plus each run's log and report.
# The repo's defaults mark known-bad zoo variants as strict expected failures; a GPU verdict that
# differs from the CPU one shows as a failed run here and is reported, not hidden.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
python=${PYTHON:-python3}
mkdir -p "$out" && out=$(cd "$out" && pwd)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/plugins${PYTHONPATH:+:$PYTHONPATH}"
summary="$out/summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }

say "date: $(date -u +%Y-%m-%dT%H:%MZ)"
say "gpus: $(nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | paste -sd ';')"
say "torch/transformers: $($python -c 'import torch, transformers; print(torch.__version__, transformers.__version__)')"
gpus=$($python -c 'import torch; print(torch.cuda.device_count())')

run_suite() {  # name, extra pytest args...
    local name=$1; shift
    local start end rc
    start=$EPOCHREALTIME
    $python -m pytest qtests -p pytest_qtests.plugin -p no:cacheprovider -q -rxXfE \
        --cache-dir "$out/cache-$name" --qt-report "$out/report-$name" --junitxml "$out/junit-$name.xml" \
        "$@" >"$out/log-$name.txt" 2>&1
    rc=$?
    end=$EPOCHREALTIME
    say "$name: exit $rc, wall $(awk "BEGIN {printf \"%.1f\", $end - $start}") s, $(tail -n 1 "$out/log-$name.txt")"
}

run_suite 1gpu
sed -n '/qtests verdicts/,/short test summary/p' "$out/log-1gpu.txt" | tee -a "$summary"

if [ "$gpus" -ge 2 ]; then
    # tests/generation_log.py logs every real generate call with its worker: how often each variant
    # (the reference included) was generated, and where.
    export QT_TEST_LOG="$out/generation-log-xdist2.jsonl"
    PYTHONPATH="$PWD/tests:$PYTHONPATH" run_suite xdist2 -n 2 --gpus-per-worker 1 -p generation_log
    sed -n '/qtests verdicts/,/short test summary/p' "$out/log-xdist2.txt" | tee -a "$summary"
    $python benchmarks/gpu_records.py "$out/cache-xdist2" | tee -a "$summary"
    $python - "$QT_TEST_LOG" <<'EOF' | tee -a "$summary"
import collections, json, sys
counts = collections.Counter()
for entry in map(json.loads, open(sys.argv[1])):
    if "generate" in entry:
        counts[(entry["generate"], entry["worker"])] += entry["n"]
for (label, worker), n in sorted(counts.items()):
    print(f"generated: {label} on {worker}: {n} requests")
EOF
fi
