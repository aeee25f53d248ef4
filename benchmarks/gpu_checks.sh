#!/usr/bin/env bash
# Every GPU measurement the open issues ask for, as one run of at most 9 minutes (the step limits
# below), which leaves room in a 15-minute device budget for the machine's start.
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR]        (default OUT_DIR: $OUT, else results/gpu)
#
# Needs a CUDA build of torch and this repository's dependencies (torch, numpy, einops, rich, pytest,
# hypothesis, transformers); nothing is installed. The lent H200 image's python3 has them all (its
# torch was 2.11 in 2026-11, the CPU tests here run 2.13). From the device tool, in the repository
# root: bash benchmarks/gpu_checks.sh "$OUT"  (timeout_s 590).
# Steps, each under its own time limit so that one slow step cannot eat the others' time:
#   1. the CUDA-only tests (5; CI has no GPU, so they run nowhere else);
#   2. benchmarks.optimizer_step --device cuda: Muon (bf16 Newton–Schulz) against torch.optim.Muon
#      and against the Newton–Schulz FLOP count at the measured bf16 GEMM rate; AdamW against
#      torch's fused AdamW;
#   3. benchmarks.multiplier_overhead --device cuda --compile --bf16 on GPT `medium` and a
#      d = 2048 two-layer model: train-step time and torch.cuda.max_memory_allocated, fused
#      multipliers against plain (goal: ≤ 1.03 time, ≤ 1.02 peak memory).
# Each step writes OUT_DIR/<step>.txt (its output) and a JSON where the benchmark makes one; a
# step that fails or times out is reported and the next one still runs. Exit status: the number
# of failed steps.
set -u
out=${1:-${OUT:-results/gpu}}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}.
failed=0

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    tail -n 40 "$out/$name.txt"
    echo "== $name: exit $rc after $((SECONDS - start))s"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

"$python" - <<'EOF' | tee "$out/machine.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA DEVICE")
EOF

step cuda_tests 60 "$python" -m pytest -q -rs -p no:cacheprovider tests/optimizers -k cuda
step optimizer_step 120 "$python" -m benchmarks.optimizer_step --device cuda --muon-steps 10 --peer-steps 5 --out "$out/optimizer_step_cuda.json"
step multiplier_overhead 360 "$python" -m benchmarks.multiplier_overhead --device cuda --compile --bf16 \
    --preset medium --no-memory-rows --instances 1 --steps 20 --forward-steps 20 \
    --widths 2048 --sweep-steps 20 --out "$out/multiplier_overhead_cuda.json"
echo "== failed steps: $failed"
exit "$failed"
