#!/usr/bin/env bash
# Everything GPU-side in one command of a lent GPU machine (the `device` tool allows 10 minutes a command, 15 a session).
#
#   OUT=/some/dir WAVEXPORT_DATA=/path/with/MNIST/raw bash benchmarks/gpu_session.sh [BUDGET_S]
#
# The GPU machine reaches no network: bring MNIST along, e.g. `mkdir -p .gpudata/MNIST/raw && cp
# ../shared/data/MNIST/raw/*.gz .gpudata/MNIST/raw/`, `.gpudata/` listed in .git/info/exclude, the device tool's
# `carry [".gpudata"]`, WAVEXPORT_DATA=$PWD/.gpudata. Next run of the paper's psMNIST protocol (docs/RESULTS.md):
#   FIT=1 RESUME_FROM=results/psmnist/run-wrnn-paper-h200 bash benchmarks/gpu_session.sh 530
#
# In order, the whole ending inside BUDGET_S (default 540) seconds:
#   1. the machine: GPU, driver, torch / Triton / ONNX Runtime versions and providers        -> $OUT/env.txt
#   2. the Triton kernel tests compiled and run on the GPU (tests/test_triton_rnn.py)         -> $OUT/kernels.txt
#      (KERNEL_TESTS=quick, the default: those of the training path first, the rest alongside step 4, so that a failure
#      elsewhere does not send the training to the plain loop; =all: every one first; =0: none)
#   3. benchmarks/train_speed.py on CUDA (the plain loop vs what model(xs) runs: the kernels, cuDNN) with a profile of
#      each preset's iteration, and benchmarks/kernel_tune.py (forward, backward and weight-gradient times per tuning
#      choice) -> $OUT/bench.*  (BENCH=0 skips them, BENCH_PRESETS picks the presets)
#   4. psMNIST training for the time left: the wRNN 16x256 on the paper's protocol (`wavexport train psmnist`: 120
#      epochs, LR/10 at 100), stopped with SIGINT when the time is up (the run saves and resumes exactly), the run
#      directory tarred -> $OUT/train.log, psmnist-run.tgz. RESUME_FROM=RUN_DIR (a run directory in the repository)
#      continues that run instead; WRNN_ARGS adds arguments (on resume e.g. "--epochs 40 --lr-milestones 33": the LR
#      drops still ahead may move to fit the time a session has). FIT=1 (with RESUME_FROM) computes those two from
#      step 3's measured seconds an iteration: as many epochs as fit, the LR divided by 10 after 80 % of them (if the
#      run's one drop has not happened yet; else only the epochs). IRNN=1 trains the iRNN-256 alongside (its paper
#      protocol; IRNN_RESUME_FROM, IRNN_ARGS likewise) -> $OUT/irnn.log, psmnist-irnn-run.tgz. SUITE=1 runs the whole
#      test suite alongside with CUDA visible (3 workers) -> $OUT/suite.txt.
# If step 2 fails, step 4 trains with WAVEXPORT_TRITON=0 (the plain loop on CUDA).
set -u
BUDGET=${1:-540}
T0=$(date +%s)
left() { echo $((T0 + BUDGET - $(date +%s))); }
# upto MARGIN: the seconds left less MARGIN, at least 1 (timeout 0 would mean no limit at all)
upto() { local s=$(( $(left) - $1 )); [ "$s" -ge 1 ] || s=1; echo "$s"; }
: "${OUT:?set OUT to the folder the results go to}"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache}
DATA=${WAVEXPORT_DATA:-$PWD/.gpudata}
RUN=${RUN:-/tmp/psmnist-wrnn-gpu}
IRUN=${IRUN:-/tmp/psmnist-irnn-gpu}
stamp() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$OUT/steps.txt"; }

stamp "1. machine"
{
  date -u; nvidia-smi 2>&1 | head -20; nproc
  $PY - <<'EOF'
import torch, onnxruntime as ort
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))
try:
    import triton; print("triton", triton.__version__)
except ImportError as e:
    print("triton missing", e)
print("onnxruntime", ort.__version__, ort.get_available_providers())
EOF
} > "$OUT/env.txt" 2>&1

KRC=0
KERNEL_TESTS=${KERNEL_TESTS:-quick}
if [ "$KERNEL_TESTS" != 0 ]; then
  # KERNEL_TESTS=quick: the tests of the training path first (the model's gradients through the kernels, the fused
  # encoder and weight gradients at a tl.dot shape), the rest of the file alongside step 4 -> $OUT/kernels-rest.txt.
  QUICK_K="model_gradients or fused_encoder or (weight_grads and C16-N12-k3)"
  stamp "2. kernel tests on the GPU ($KERNEL_TESTS)"
  if [ "$KERNEL_TESTS" = quick ]; then
    timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_triton_rnn.py -k "$QUICK_K" > "$OUT/kernels.txt" 2>&1
  else
    timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_triton_rnn.py > "$OUT/kernels.txt" 2>&1
  fi
  KRC=$?
  echo "exit $KRC" >> "$OUT/kernels.txt"
  stamp "   kernel tests exit $KRC: $(tail -n 2 "$OUT/kernels.txt" | head -n 1)"
  [ "$KRC" = 0 ] || export WAVEXPORT_TRITON=0
fi

if [ "${BENCH:-1}" = 1 ]; then
  stamp "3. train_speed on CUDA"
  timeout 200 $PY benchmarks/train_speed.py --devices cuda --no-memory --reps 3 --json --profile 15 \
    --presets "${BENCH_PRESETS:-psmnist-wrnn,psmnist-irnn,adding100-wrnn,adding1000-wrnn,adding100-irnn,copy80-wrnn,copy480-wrnn}" \
    > "$OUT/bench.json" 2> "$OUT/bench.txt"
  stamp "   train_speed exit $?"
  if [ "$KRC" = 0 ]; then
    stamp "   kernel_tune"
    timeout 90 $PY benchmarks/kernel_tune.py --quick --reps 3 >> "$OUT/bench.txt" 2>&1
    stamp "   kernel_tune exit $?"
  fi
fi

stamp "4. psMNIST training, $(left) s left"
if [ "$KERNEL_TESTS" = quick ]; then
  ( timeout "$(upto 40)" $PY -m pytest -q -p no:cacheprovider tests/test_triton_rnn.py -k "not ($QUICK_K)" \
      > "$OUT/kernels-rest.txt" 2>&1; echo "exit $?" >> "$OUT/kernels-rest.txt" ) &
fi
if [ "${SUITE:-0}" = 1 ]; then
  ( setsid timeout "$(upto 20)" $PY -m pytest -q -p no:cacheprovider -n 3 -m "not gpu_kernels" \
      > "$OUT/suite.txt" 2>&1; echo "exit $?" >> "$OUT/suite.txt" ) &
fi
# train ARCH RUN_DIR RESUME_FROM LOG EXTRA...: the paper's protocol for ARCH, or RESUME_FROM continued, until the time is
# up (SIGINT: the run saves; 35 s kept for that, the tar and the transfer).
train() {
  local arch=$1 run=$2 from=$3 log=$4; shift 4
  local args=(--arch "$arch")
  if [ -n "$from" ]; then
    [ "$(realpath "$from")" = "$(realpath -m "$run")" ] || { rm -rf "$run" && cp -r "$from" "$run"; }
    args=(--resume)
  fi
  timeout -s INT -k 30 "$(upto 35)" $PY -m wavexport train psmnist "${args[@]}" "$@" --device cuda \
    --data-dir "$DATA" --out "$run" -q > "$log" 2>&1
  echo "exit $?" >> "$log"
  tail -n 3 "$run/metrics.jsonl" >> "$log" 2>/dev/null
}
if [ "${IRNN:-0}" = 1 ]; then
  # shellcheck disable=SC2086
  train irnn "$IRUN" "${IRNN_RESUME_FROM:-}" "$OUT/irnn.log" ${IRNN_ARGS:-} &
  IPID=$!
fi
if [ "${FIT:-0}" = 1 ] && [ -n "${RESUME_FROM:-}" ]; then
  # 446 iterations an epoch at step 3's measured time (+10 %) and 1.5 s of evaluation; 60 s for start-up and the end.
  WRNN_ARGS=$($PY - "$OUT/bench.json" "$(left)" "$RESUME_FROM/metrics.jsonl" <<'EOF'
import json, sys
bench, left, log = sys.argv[1], float(sys.argv[2]), sys.argv[3]
try:
    it = next(r for r in json.load(open(bench))["results"] if r["preset"] == "psmnist-wrnn")["new"]["wall_s"]
except Exception:
    it = 0.04
records = [json.loads(line) for line in open(log)]
done = max(r.get("epoch", 0) for r in records)
more = max(2, int((left - 60) / (446 * it * 1.10 + 1.5)))
dropped = min(r["lr"] for r in records if "lr" in r) < records[0]["lr"]
# One LR drop, as the paper's schedule: once it has happened, only the length changes.
# --steps lifts a step cap the run may carry (results/psmnist/run-wrnn-h200 has one from its CPU leg).
print(f"--epochs {done + more} --steps {446 * (done + more)}"
      + ("" if dropped else f" --lr-milestones {done + max(1, round(0.8 * more))}"))
EOF
)
  stamp "   fitted: $WRNN_ARGS"
fi
# shellcheck disable=SC2086
train wrnn "$RUN" "${RESUME_FROM:-}" "$OUT/train.log" ${WRNN_ARGS:-}
stamp "   wRNN training $(grep '^exit' "$OUT/train.log"): $(tail -n 1 "$OUT/train.log")"
tar czf "$OUT/psmnist-run.tgz" -C "$(dirname "$RUN")" "$(basename "$RUN")" 2>> "$OUT/steps.txt"
if [ -n "${IPID:-}" ]; then
  wait "$IPID"
  stamp "   iRNN training $(grep '^exit' "$OUT/irnn.log"): $(tail -n 1 "$OUT/irnn.log")"
  tar czf "$OUT/psmnist-irnn-run.tgz" -C "$(dirname "$IRUN")" "$(basename "$IRUN")" 2>> "$OUT/steps.txt"
fi
wait
stamp "done"
