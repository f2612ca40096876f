#!/usr/bin/env bash
# GPU benchmark: one script, about 5 minutes on one NVIDIA GPU, nothing to edit.
#
#     bash bench/gpu.sh            # on a machine with an NVIDIA GPU (run from anywhere)
#     bash bench/gpu.sh --smoke    # tiny, on the CPU, well under a minute (XMR_GPU_SMOKE=1 too)
#
# Measures, on the GPU: the float32 GEMM rate; the SDML step rate (bench/train_speed.py's network
# and FLOP count); the XMedia-shaped 200-epoch job with 5 actors sharing the GPU (0.2 GPU each)
# against one actor at a time (bench/_gpu_bench.py); branch-model steps (bench/branch_speed.py:
# MTFN and VSE, % of the GEMM rate for the same shapes); the population sweep
# (bench/population_speed.py, when present); the data-parallel curve: one modality on W = 1..N Ray
# Train workers, one GPU each, N = the GPUs torch sees (bench/train_scale.py --curve: rows/s and
# scaling efficiency; 2 CPU workers in a smoke run). Each part has a time budget; a part that fails or
# runs out of time is reported as such and the rest still run. Prints every part's own tables,
# then one summary table to paste into BENCHMARKS.md. Exit status: 0 when every part ran.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
SMOKE=${XMR_GPU_SMOKE:-0}
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        *) echo "bench/gpu.sh: unknown argument $arg (only --smoke)" >&2; exit 2 ;;
    esac
done
if [ "$SMOKE" = 1 ]; then
    # generous budgets: a smoke run takes ~30 s on 2 quiet cores, but test machines are busy
    DEVICE=cpu; FLAGS=--smoke; BUDGET_SDML=420; BUDGET_BRANCH=240; BUDGET_POP=240; BUDGET_CURVE=420
    CURVE_FLAGS=--quick
else
    DEVICE=cuda; FLAGS=; BUDGET_SDML=170; BUDGET_BRANCH=50; BUDGET_POP=60; BUDGET_CURVE=300
    CURVE_FLAGS=
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "bench/gpu.sh: torch sees no CUDA GPU here (nvidia-smi: $(nvidia-smi -L 2>&1 | head -1)); use --smoke on a CPU" >&2
        exit 2
    fi
fi
OUT=$(mktemp -d "${TMPDIR:-/tmp}/gpu_bench.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
export TQDM_DISABLE=1
failed=0
part() {  # part NAME BUDGET_S COMMAND...: run with a time limit, say how it ended
    local name=$1 budget=$2; shift 2
    echo; echo "## $name"
    timeout --kill-after=10 "$budget" "$@"
    local rc=$?
    if [ $rc -ne 0 ]; then
        failed=1
        if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "($name: stopped after its ${budget} s budget)"; else echo "($name: failed, exit $rc)"; fi
    fi
    return $rc
}
part "GEMM rate, SDML step, XMedia-shaped job" "$BUDGET_SDML" \
    "$PY" bench/_gpu_bench.py --device "$DEVICE" $FLAGS --json "$OUT/sdml.json"
part "Branch-model steps" "$BUDGET_BRANCH" \
    "$PY" bench/branch_speed.py --device "$DEVICE" --models mtfn,vse --no-epoch --steps 4 --repeats 3 \
    $FLAGS --json "$OUT/branch.json"
if [ -f bench/population_speed.py ]; then
    if part "Population sweep" "$BUDGET_POP" "$PY" bench/population_speed.py --device "$DEVICE" $FLAGS; then
        echo "measured" > "$OUT/population.status"
    else
        echo "failed or out of time" > "$OUT/population.status"
    fi
else
    echo "not present" > "$OUT/population.status"
fi
part "Data-parallel curve, W = 1..N workers" "$BUDGET_CURVE" \
    "$PY" bench/train_scale.py --curve --device "$DEVICE" $CURVE_FLAGS --json "$OUT/curve.json"
"$PY" bench/_gpu_bench.py --summary "$OUT" || failed=1
exit $failed
