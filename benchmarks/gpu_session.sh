#!/usr/bin/env bash
# Everything GPU-side in one command of a lent GPU machine (the `device` tool allows 10 minutes a command, 15 a session).
#
#   OUT=/some/dir WAVEXPORT_DATA=/path/with/MNIST/raw bash benchmarks/gpu_session.sh [BUDGET_S]
#
# In order, each step capped so that the whole ends inside BUDGET_S (default 540) seconds:
#   1. the machine: GPU, driver, torch / Triton / ONNX Runtime versions and providers        -> $OUT/env.txt
#   2. the Triton kernel tests compiled and run on the GPU (tests/test_triton_rnn.py)         -> $OUT/kernels.txt
#   3. benchmarks/train_speed.py on CUDA (the plain loop vs what model(xs) runs: the kernels, cuDNN) and
#      benchmarks/kernel_tune.py (forward, backward and weight-gradient times per tuning choice) -> $OUT/bench.*
#   4. psMNIST wRNN 16x256 trained with whatever time is left, its schedule fitted to it (the number of epochs from
#      step 3's measured epoch time, the LR divided by 10 at 80 % of them, as the paper does at 100 of 120), stopped
#      with SIGINT (the run saves and can be resumed), the run directory tarred       -> $OUT/train.log, psmnist-run.tgz
#      meanwhile the whole test suite runs with CUDA visible (3 workers)                  -> $OUT/suite.txt
# If step 2 fails, step 4 trains with WAVEXPORT_TRITON=0 (the plain loop on CUDA). With RESUME_FROM=RUN_DIR (a run
# directory in the repository, e.g. results/psmnist/run-wrnn-h200) step 4 resumes that run for the fitted number of
# epochs more instead of starting one.
set -u
BUDGET=${1:-540}
T0=$(date +%s)
left() { echo $((T0 + BUDGET - $(date +%s))); }
: "${OUT:?set OUT to the folder the results go to}"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache}
DATA=${WAVEXPORT_DATA:-$PWD/.gpudata}
RUN=${RUN:-/tmp/psmnist-wrnn-gpu}
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

stamp "2. kernel tests on the GPU"
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_triton_rnn.py > "$OUT/kernels.txt" 2>&1
KRC=$?
echo "exit $KRC" >> "$OUT/kernels.txt"
stamp "   kernel tests exit $KRC"
[ "$KRC" = 0 ] || export WAVEXPORT_TRITON=0

stamp "3. train_speed on CUDA"
timeout 150 $PY benchmarks/train_speed.py --devices cuda --no-memory --reps 3 --json \
  --presets psmnist-wrnn,psmnist-irnn,adding100-wrnn,adding1000-wrnn,adding100-irnn,copy80-wrnn,copy480-wrnn \
  > "$OUT/bench.json" 2> "$OUT/bench.txt"
stamp "   train_speed exit $?"
if [ "$KRC" = 0 ]; then
  stamp "   kernel_tune"
  timeout 60 $PY benchmarks/kernel_tune.py --quick --reps 3 >> "$OUT/bench.txt" 2>&1
  stamp "   kernel_tune exit $?"
fi

stamp "4. psMNIST training, $(left) s left; the suite alongside"
( setsid timeout $(( $(left) - 20 )) $PY -m pytest -q -p no:cacheprovider -n 3 -m "not gpu_kernels" \
    > "$OUT/suite.txt" 2>&1; echo "exit $?" >> "$OUT/suite.txt" ) &
SUITE=$!
# Epochs from the measured seconds per iteration ("new": the kernels, or the plain loop without them), 446 iterations
# an epoch, +15 % for the suite running alongside and 2 s of evaluation an epoch (on 2026-11-26 the H200 ran 12
# planned epochs in 232 s, 19.3 s each, at 39.2 ms an iteration); at most the paper's 120.
PLAN=$($PY - "$OUT/bench.json" "$(left)" <<'EOF'
import json, math, sys
path, left = sys.argv[1], float(sys.argv[2])
try:
    r = next(r for r in json.load(open(path))["results"] if r["preset"] == "psmnist-wrnn")
    it = r["new"]["wall_s"]
except Exception:
    it = 0.25
train = max(30.0, left - 75)  # data loading, start-up, the final save and tar
epochs = max(1, min(120, int(train / (446 * it * 1.15 + 2))))
milestone = 100 if epochs == 120 else max(1, round(0.8 * epochs))
print(epochs, milestone, f"{it:.4f}")
EOF
)
read -r EPOCHS MILESTONE ITER <<< "$PLAN"
if [ -n "${RESUME_FROM:-}" ] && [ -f "$RESUME_FROM/checkpoint.pt" ]; then
  # Continue a run (e.g. results/psmnist/run-wrnn-h200, the 2026-11-26 run) for EPOCHS more epochs on its own schedule.
  rm -rf "$RUN" && cp -r "$RESUME_FROM" "$RUN"
  DONE=$($PY -c "import json,sys; print(max(json.loads(l).get('epoch', 0) for l in open(sys.argv[1])))" "$RUN/metrics.jsonl")
  stamp "   plan: resume $RESUME_FROM from epoch $DONE for $EPOCHS more, measured $ITER s/iteration"
  TRAIN_ARGS=(--resume --epochs $((DONE + EPOCHS)) --steps $(((DONE + EPOCHS) * 446)))  # lift a --steps cap it had
else
  stamp "   plan: $EPOCHS epochs, LR/10 at $MILESTONE, measured $ITER s/iteration"
  TRAIN_ARGS=(--arch wrnn --epochs "$EPOCHS" --lr-milestones "$MILESTONE")
fi
timeout -s INT -k 30 $(( $(left) - 35 )) $PY -m wavexport train psmnist "${TRAIN_ARGS[@]}" --device cuda \
  --data-dir "$DATA" --out "$RUN" -q > "$OUT/train.log" 2>&1
stamp "   training exit $?"
tail -n 3 "$RUN/metrics.jsonl" >> "$OUT/train.log" 2>/dev/null
tar czf "$OUT/psmnist-run.tgz" -C "$(dirname "$RUN")" "$(basename "$RUN")" 2>> "$OUT/steps.txt"
wait "$SUITE" 2>/dev/null
stamp "done"
