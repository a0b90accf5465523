#!/usr/bin/env bash
# The one GPU session that checks the backend (issue: real GPU backend): the GPU-only correctness
# tests (bf16 Triton attention vs the reference, the paged model on CUDA), then the efficiency
# benchmark (Yi-34B TP-2 shard, all 60 layers: decode at batch 32/64/128, KV 2,048, vs the memory
# floor; a 1,536-token chunk vs the compute floor) and the attention benchmark. Results land in $OUT.
#
# The device image has torch, triton, numpy, pandas, pyarrow, pytest, pyyaml and tqdm; nothing to
# carry (the script checks those imports first and stops in one line if one is missing). A test
# failure does not stop the benchmarks: pytest's exit status goes to $OUT/gpu_tests_status.txt and
# the script exits with it at the end.
# Device call (tool `run`), about 4 minutes expected (34 GB of random weights, Triton compiles):
#     run(kind="nvidia-h100-x1", timeout_s=420, command="bash backend/gpu_session.sh")
# Back here: commit $OUT's files under results/backend/<date>_h100/ with this script's name as the command.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?run this through the device tool, which sets OUT}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
python3 -c "import torch, triton, numpy, pandas, pyarrow, yaml, tqdm, pytest" 2>/dev/null || {
    echo "error: the device image lacks a module this script needs: $(python3 -c "import torch, triton, numpy, pandas, pyarrow, yaml, tqdm, pytest" 2>&1 | tail -1)" | tee "$OUT/preflight.txt" >&2
    exit 4
}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)' \
    | tee -a "$OUT/gpu.txt"
start=$SECONDS
# Ray is not on the image: its TP test is the CPU suite's (gloo) and is deselected here.
tests_status=0
python3 -m pytest -q -p no:cacheprovider tests/test_attention.py tests/test_backend_cpu.py -k "not ray_tp" 2>&1 \
    | tail -15 | tee "$OUT/gpu_tests.txt" || tests_status=${PIPESTATUS[0]}
echo "$tests_status" > "$OUT/gpu_tests_status.txt"
echo "tests: $((SECONDS - start)) s, pytest exit status $tests_status"
python3 -m bench.attention_bench 2>&1 | tee "$OUT/attention_bench.txt" || true
echo "attention bench: $((SECONDS - start)) s"
python3 -m bench.backend_efficiency --out "$OUT/backend_efficiency.json" 2>&1 | tee "$OUT/backend_efficiency.txt"
echo "total: $((SECONDS - start)) s"
if [[ "$tests_status" != 0 ]]; then
    echo "error: the GPU tests failed (pytest exit status $tests_status, see gpu_tests.txt)" >&2
    exit "$tests_status"
fi
