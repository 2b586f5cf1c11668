#!/usr/bin/env bash
# The GPU measurements of docs/speed.md in one short run, on a machine with a CUDA GPU where `make setup` has run:
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # default outputs/gpu_check; about 10 minutes on one H100/H200
# It writes each step's table and JSON under OUT_DIR and goes on past a failed step, so one run gives every figure:
#   1. the `gpu` tests (experiment=gpu trains, resumes and samples on the GPU);
#   2. `make bench` on small and base: experiment=gpu against the plain loops, host ms per step, 1,000 samples at
#      the default settings; then the same with CUDA graphs (model.compile_mode=reduce-overhead);
#   3. time to quality of experiment=gpu from scratch (class accuracy and FID over its floor, 100 per class).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/gpu_check}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
step() {  # step NAME COMMAND...: run it, keep its output in OUT/NAME.log, remember a failure
    local name=$1
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$OUT/$name.log" | tail -n 25 || { echo "== $name failed"; status=1; }
}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA GPU visible to $PY: these checks need one" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
step gpu_tests "$PY" -m pytest -m gpu -q -p no:cacheprovider
step bench "$PY" benchmarks/bench.py --presets small,base --steps 60 --warmup 10 --repeats 2 --skip-ddpm \
    --output "$OUT/bench.json"
step bench_cuda_graphs "$PY" benchmarks/bench.py --presets small,base --steps 60 --warmup 10 --repeats 2 --skip-ddpm \
    --overrides experiment=gpu model.compile_mode=reduce-overhead --output "$OUT/bench_cuda_graphs.json"
step time_to_quality "$PY" benchmarks/time_to_quality.py --overrides experiment=gpu --every-s 10 \
    --output "$OUT/time_to_quality.json"
exit $status
