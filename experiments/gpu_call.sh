#!/usr/bin/env bash
# One call of the GPU plan (experiments/GPU_PLAN.md), run in the repository root of the device
# machine's copy of the working tree:
#
#     bash experiments/gpu_call.sh STEP [STEP ...]      (e.g. `cuda bench`: one call, one budget)
#
#   cuda           the CUDA tests (pytest -m cuda)
#   suite          the whole fast suite on the GPU machine
#   check          cuda, then suite
#   bench          bench_certify, then bench_train (eager; random weights, no data needed); each
#                  writes its JSON after every model/round, so a cut-off run keeps what it timed
#   bench-compile  bench_train's torch.compile rows (Gaussian and MaxUp m=4, compile untimed)
#   table  train + certify the CIFAR-10 sigma=0.25 table (experiments/reproduce.py, resumable);
#          once it is complete: check_precision and bench_sequential on its Gaussian model
#
# The steps together stop well inside the device's 10-minute command limit (LIMIT seconds of
# work, default 540, shared by the steps given) and leaves what it made in $OUT: logs, result JSON, and for `table` the run
# directories (last.pt, metrics, TSVs) as tarballs to unpack in the checkout's root and carry
# (`runs`) into the next call. Environment:
#   OUT        where results go (default ./gpu_out)
#   DATA       the CIFAR-10 tarball (default data/cifar10-jpeg.tar.gz; carry `data`)
#   GIT_SHA    the commit the working tree was copied from (the copy has no .git); recorded
#   GIT_DIRTY  1 if that tree had uncommitted changes, 0 if not (unset: recorded as unknown)
#   SMOKE=1    tiny settings that run on a CPU in minutes: tests the plumbing, not the GPU
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: bash experiments/gpu_call.sh check|bench|table [...]" >&2; exit 2; }
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 ROBUSTMAXUP_CACHE=${ROBUSTMAXUP_CACHE:-/tmp/robustmaxup-cache}
export ROBUSTMAXUP_GIT_SHA=${GIT_SHA:-} ROBUSTMAXUP_GIT_DIRTY=${GIT_DIRTY:-}
DATA=${DATA:-data/cifar10-jpeg.tar.gz}
LIMIT=${LIMIT:-540}
SMOKE=${SMOKE:-0}
PY=${PY:-python3}
LOG="$OUT/gpu_call.log"
STEP=start
GPU=$($PY -c "import torch; print(torch.cuda.get_device_name(0).split()[1].lower() if torch.cuda.is_available() else 'cpu')")
RUNS=runs/c10-s0.25
RESULTS=experiments/results/cifar10_sigma0.25
[ "$SMOKE" = 1 ] && RUNS=runs/c10-smoke && RESULTS=$OUT/cifar10_smoke

left() { echo $((LIMIT - SECONDS)); }
say() { echo "[gpu_call $STEP $(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$LOG"; }
# run CMD... with at most $1 seconds (never more than what is left), logging everything
bounded() {
    local limit=$1; shift
    local t; t=$(left); [ "$limit" -gt "$t" ] && limit=$t
    if [ "$limit" -le 10 ]; then say "skipped (no time left): $*"; CUT+=("$STEP"); return 124; fi
    say "run (<= ${limit}s): $*"
    timeout -k 15 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    say "rc=$rc"
    case "$rc" in 0) ;; 124|137) CUT+=("$STEP") ;; *) FAILED+=("$STEP") ;; esac
    return "$rc"
}
FAILED=(); CUT=()  # steps whose command failed / ran out of time (the exit status says which)

say "device $GPU; $($PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'); git ${GIT_SHA:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
for STEP in "$@"; do
case "$STEP" in
check|cuda|suite)
    [ "$STEP" = suite ] || bounded 90 $PY -m pytest -q -p no:cacheprovider -m cuda tests -rs
    [ "$STEP" = cuda ] || bounded 400 $PY -m pytest -q -p no:cacheprovider tests -x
    ;;
bench)
    if [ "$SMOKE" = 1 ]; then
        bounded 200 $PY experiments/bench_certify.py --quick --variants fp32 fp32+fold --out "$OUT/bench_certify_$GPU.json"
        bounded 200 $PY experiments/bench_train.py --quick --methods maxup --copies 4 --out "$OUT/bench_train_$GPU.json"
    else
        bounded 280 $PY experiments/bench_certify.py --variants bf16 bf16+fold bf16+fold+batch=250 \
            bf16+fold+batch=4000 bf16+fold+compile --out "$OUT/bench_certify_$GPU.json" --profile "$OUT/profile"
        bounded 160 $PY experiments/bench_train.py --methods gaussian maxup --out "$OUT/bench_train_$GPU.json"
    fi
    ;;
bench-compile)
    Q=(); [ "$SMOKE" = 1 ] && Q=(--quick)
    bounded 300 $PY experiments/bench_train.py ${Q[@]+"${Q[@]}"} --methods maxup --copies 4 --compile \
        --out "$OUT/bench_train_compiled_$GPU.json"
    ;;
table)
    REPRO=(--preset cifar10 --data-root "$DATA" --methods gaussian "maxup m=4" --sigma 0.25 --sequential
           --out "$RUNS" --results "$RESULTS")
    [ "$SMOKE" = 1 ] && REPRO+=(--train-flags="--max-train 256 --epochs 1 --max-eval 50 --batch 64"
                                --max-images 4 --n 2000 --device cpu)
    bounded "$(( $(left) - 40 ))" $PY experiments/reproduce.py "${REPRO[@]}"
    rc=$?
    if [ "$rc" = 0 ]; then
        CKPT=$RUNS/gaussian/last.pt
        if [ "$SMOKE" = 1 ]; then
            SIZES=(--max 8 --n 300 --batch 300 --device cpu)
            SEQ=(--cifar 4 --n 2000 --batch 1000 --images-per-batch 2)
        else
            SIZES=(--max 200 --n 10000 --batch 2000 --device cuda --no-tf32)
            SEQ=(--cifar 100)
        fi
        bounded 150 $PY experiments/check_precision.py --checkpoint "$CKPT" --dataset cifar10 --data-root "$DATA" \
            --skip 20 "${SIZES[@]}" --out "$OUT/precision_$GPU.json"
        bounded 200 $PY experiments/bench_sequential.py --sections cifar10 --dataset cifar10 --checkpoint "$CKPT" \
            --data-root "$DATA" "${SEQ[@]}" --out "$OUT/bench_sequential_$GPU.json"
        [ "$SMOKE" = 1 ] || tar czf "$OUT/results.tgz" "$RESULTS".* 2>/dev/null
    fi
    # the runs, for the next call (best.pt is not needed to resume; each tarball < 16 MB)
    for d in "$RUNS"/*/; do
        [ -f "$d/last.pt" ] && tar czf "$OUT/run_$(basename "$d").tgz" --exclude=best.pt "$d"
    done
    ls "$RUNS"/*.tsv* >/dev/null 2>&1 && tar czf "$OUT/tsvs.tgz" "$RUNS"/*.tsv* "$RUNS"/table.md 2>/dev/null
    ;;
*)
    echo "gpu_call.sh: unknown step '$STEP' (cuda, suite, check, bench, bench-compile or table)" >&2; exit 2 ;;
esac
done
# exit 0: every command succeeded; 1: one failed; 3: none failed but one was cut at its time limit
# (a table run resumes on the next call). Never 124: the device tool reads that as its own timeout.
if [ ${#FAILED[@]} -gt 0 ]; then say "done in ${SECONDS}s; FAILED: ${FAILED[*]}"; exit 1; fi
if [ ${#CUT[@]} -gt 0 ]; then say "done in ${SECONDS}s; cut at the time limit: ${CUT[*]}"; exit 3; fi
say "done in ${SECONDS}s"
