#!/usr/bin/env bash
# The GPU procedure for a machine with one Hopper GPU (H100 80GB HBM3 or H200), in order
# (docs/gpu-session.md has what each step measures and how long it takes):
#   backend   GPU tests (bf16 Triton attention vs the reference, the paged model on CUDA), the
#             attention benchmark, decode/prefill efficiency against the memory and compute floors
#   profile   the Yi-34B TP-2 shard's operations, fitted, with the held-out error table
#   validate  real vs simulated vllm and sarathi on one request list
#
#   bash backend/gpu_procedure.sh [--out DIR] [--dry-run] [STEP ...]     (no STEP: all three)
#
# Everything lands in DIR (default results/gpu/<date>_<gpu>, e.g. results/gpu/2026-12-02_h200).
# The hardware config is the GPU's own (backend/gpus.py); another GPU is refused in one line.
# --dry-run runs the same steps on the CPU with a tiny model (a fast subset of the tests, the
# quick profiler grid) and writes the same files: a check of the procedure, not a measurement.
#
# Needs torch, triton and numpy (a CUDA image has them) and the wheels that
# `python -m backend.offline_wheels .whl` gathers on a machine with network; install those with
#   pip install --no-index --find-links .whl -r .whl/requirements.txt
# A failing step does not stop the later ones; the exit status is the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python3}"

out="" dry_run=0 steps=()
while (($#)); do
    case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    backend | profile | validate) steps+=("$1"); shift ;;
    *) echo "error: unknown argument '$1'; usage: bash backend/gpu_procedure.sh [--out DIR] [--dry-run] [backend] [profile] [validate]" >&2; exit 2 ;;
    esac
done
((${#steps[@]})) || steps=(backend profile validate)

# One interpreter checks the imports and names the GPU and its hardware config (or says why not).
info="$("$PYTHON" - "$dry_run" <<'PY'
import sys
try:
    import torch, triton, numpy, pandas, pyarrow, yaml, tqdm, pytest, hydra, omegaconf, plotly  # noqa: F401
except ModuleNotFoundError as exc:
    print(f"error: {exc}; install the offline wheels: pip install --no-index --find-links .whl "
          "-r .whl/requirements.txt (made by python -m backend.offline_wheels .whl)", file=sys.stderr)
    sys.exit(4)
from backend.gpus import cuda_device_name, hardware_config_name
if sys.argv[1] == "1":
    print("cpu-dry-run none")
    sys.exit()
name = cuda_device_name()
if name is None:
    print("error: torch sees no CUDA GPU; run this on the GPU machine, or add --dry-run for a CPU check",
          file=sys.stderr)
    sys.exit(3)
try:
    print(name.replace(" ", "_"), hardware_config_name(name))
except ValueError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(3)
PY
)" || exit $?
read -r gpu hardware <<< "$info"
gpu="${gpu//_/ }"
slug="$(tr '[:upper:]' '[:lower:]' <<< "${gpu#NVIDIA }" | tr -cs 'a-z0-9\n' '-')"
out="${out:-results/gpu/$(date +%F)_${slug%-}}"
mkdir -p "$out" || exit 2
commit="$(git describe --always --dirty 2>/dev/null || echo "${SCHED_SIM_COMMIT:-unknown}")"

# The dry run's stand-ins: a tiny model on the CPU.
tiny=(model.name=tiny model.num_layers=2 model.hidden_size=64 model.num_heads=4 model.num_kv_heads=2 model.head_dim=16
      model.intermediate_size=128 model.vocab_size=128)
tiny_yaml="$(mktemp)"
trap 'rm -f "$tiny_yaml"' EXIT
printf '%s\n' "name: tiny" "num_layers: 2" "hidden_size: 64" "num_heads: 4" "num_kv_heads: 2" "head_dim: 16" \
    "intermediate_size: 128" "vocab_size: 128" "rope_theta: 10000.0" "max_position: 4096" "dtype_bytes: 4" > "$tiny_yaml"

{
    echo "gpu: $gpu; hardware config: $hardware; commit: $commit; steps: ${steps[*]}"
    if ((dry_run)); then echo "dry run on the CPU with a tiny model: not a measurement"
    else nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv; fi
    "$PYTHON" -c 'import platform, torch, triton; print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'
} | tee "$out/gpu.txt"

status=0
note() { [[ "$status" != 0 ]] || status="$1"; }
started=$SECONDS
for step in "${steps[@]}"; do
    t0=$SECONDS
    case "$step" in
    backend)
        # Ray is not needed on the GPU machine: its TP test is the CPU suite's (gloo).
        selection=(tests/test_attention.py tests/test_backend_cpu.py -k "not ray_tp")
        ((dry_run)) && selection=(tests/test_attention.py -k "metadata or write_kv or warm_up")
        "$PYTHON" -m pytest -q -p no:cacheprovider "${selection[@]}" 2>&1 | tail -15 | tee "$out/gpu_tests.txt"
        tests_status=${PIPESTATUS[0]}
        echo "$tests_status" > "$out/gpu_tests_status.txt"
        note "$tests_status"
        "$PYTHON" -m bench.attention_bench 2>&1 | tee "$out/attention_bench.txt"; note "${PIPESTATUS[0]}"
        efficiency=(--out "$out/backend_efficiency.json")
        ((dry_run)) && efficiency+=(--device cpu --model "$tiny_yaml" --batches 2 4 --kv-len 64 --chunk 32
                                    --iters 2 --copy-bytes 16000000 --matmul-size 256)
        "$PYTHON" -m bench.backend_efficiency "${efficiency[@]}" 2>&1 | tee "$out/backend_efficiency.txt"
        note "${PIPESTATUS[0]}"
        ;;
    profile)
        args=(model=yi_34b parallel.tp=2 "profiler.output_root=$out/profile" "profiler.git_commit=$commit")
        ((dry_run)) && args+=("${tiny[@]}" profiler.grid=quick profiler.device=cpu)
        "$PYTHON" -m profiler "${args[@]}" 2>&1 | tee "$out/profile.log"; note "${PIPESTATUS[0]}"
        for dir in "$out"/profile/*/; do
            "$PYTHON" -m profiler.accuracy "$dir" --cache-dir "$out/profile/.fits" 2>&1 | tee "$out/accuracy.txt"
            note "${PIPESTATUS[0]}"
        done
        ;;
    validate)
        args=("validate.git_commit=$commit" "hydra.run.dir=$out/validation")
        ((dry_run)) && args+=("${tiny[@]}" real.device=cpu real.num_blocks=400 real.num_layers=1
                              cost_model=analytical validate.num_requests=4 validate.max_tokens=2048
                              validate.arrival.qps=4.0 workload.lengths.kind=fixed
                              workload.lengths.prefill=40 workload.lengths.decode=5)
        "$PYTHON" -m experiments.validate "${args[@]}" 2>&1 | tee "$out/validate.log"; note "${PIPESTATUS[0]}"
        ;;
    esac
    echo "$step: $((SECONDS - t0)) s" | tee -a "$out/durations.txt"
done

# Every file the steps must leave (docs/gpu-session.md lists them); a missing one fails the run.
expected=(gpu.txt durations.txt)
for step in "${steps[@]}"; do
    case "$step" in
    backend) expected+=(gpu_tests.txt gpu_tests_status.txt attention_bench.txt backend_efficiency.txt
                        backend_efficiency.json) ;;
    profile) expected+=(profile.log accuracy.txt 'profile/*/profile.csv' 'profile/*/metadata.json') ;;
    validate) expected+=(validate.log validation/validation.json validation/validation_report.html
                         validation/iterations.parquet 'validation/real_*/summary.json'
                         'validation/sim_*/summary.json') ;;
    esac
done
missing=()
for file in "${expected[@]}"; do compgen -G "$out/$file" > /dev/null || missing+=("$file"); done
if ((${#missing[@]})); then
    echo "error: the procedure did not write ${missing[*]} (see the logs in $out)" >&2
    note 5
fi
echo "total: $((SECONDS - started)) s; outputs in $out; exit status $status" | tee -a "$out/durations.txt"
exit "$status"
