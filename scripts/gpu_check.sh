#!/usr/bin/env bash
# The day a GPU is lent: one command, under 8 minutes, everything into one folder.
#   bash scripts/gpu_check.sh [OUT]        (default OUT: runs/gpu-check)
# 1. the kernel tests on the GPU, compiled Triton against the fp64 references (not the interpreter)
# 2. the kernel benchmark table: eager, torch.compile, Triton, and Liger when it is installed
#    (pip install liger-kernel)
# 3. a shortened gpu-preset reproduction (GPT-2-small-sized), its report and stage times
# Needs the CUDA build of torch and triton: pip install -e ".[test]" on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu-check}
python -c "import sys, torch; torch.cuda.is_available() or sys.exit('gpu_check: no CUDA device here; on a CPU run python -m pytest -q')"
mkdir -p "$OUT"
{ python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"; nvidia-smi -L || true; git rev-parse HEAD || true; date -u; } > "$OUT/machine.txt"
start=$SECONDS
env -u TRITON_INTERPRET NANOBIAS_TEST_DEVICE=cuda python -m pytest -q tests/test_kernels_logprob.py \
    tests/test_kernels_activation.py 2>&1 | tee "$OUT/kernel_tests.txt"
echo "kernel tests: $((SECONDS - start)) s" | tee -a "$OUT/times.txt"
start=$SECONDS
python -m nanobias.kernels.bench --quick --out "$OUT/bench" 2>&1 | tee "$OUT/bench.txt"
echo "kernel bench: $((SECONDS - start)) s" | tee -a "$OUT/times.txt"
start=$SECONDS
# about a tenth of the gpu preset's budget: the plumbing and the speed on real hardware, not its results
python -m nanobias reproduce --preset gpu --out "$OUT/reproduce" --force \
    --set pretrain.steps=500 --set pretrain.eval_every=250 --set pretrain.ckpt_every=250 \
    --set reward.steps=150 --set reward.eval_every=50 --set reward.ckpt_every=50 \
    --set rl.steps=20 --set eval_examples=400 --set reward_eval.sensitivity_completions=100 2>&1 | tee "$OUT/reproduce.txt"
echo "reproduce: $((SECONDS - start)) s" | tee -a "$OUT/times.txt"
python -m nanobias bench --preset gpu --seconds 5 2>&1 | tee "$OUT/model_bench.txt"
echo "wrote $OUT: machine.txt, kernel_tests.txt, bench/ (bench.csv, bench.png), reproduce/ (report.md), times.txt"
