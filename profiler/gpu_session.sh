#!/usr/bin/env bash
# The one GPU session that makes the shipped H100 profile: profile Yi-34B's TP-2 shard -> fit the
# laws -> print the held-out error table -> leave the profile in $OUT. docs/profiler.md has the
# whole procedure; in short:
#
# 1. Here (no GPU), once: the GPU image has no hydra-core, omegaconf or antlr4, which
#    `python -m profiler` imports, so carry them as wheels (nothing else on this path is missing:
#    simpy, ray and plotly are not imported; `profiler.accuracy` imports plotly only for --html,
#    which the device step does not ask for):
#        bash profiler/gpu_session.sh prepare
# 2. The device call (tool `run`). A session has 15 minutes of device time in all (machine start,
#    idle time and every call counted) and one command may run at most 10 minutes; this one is
#    expected to take about 3 minutes (~15 s start-up, ~2 min measuring ~3,900 points incl. Triton
#    compiles, ~5 s fit), which leaves time to rerun it once:
#        run(kind="nvidia-h100-x1", carry=[".whl"], timeout_s=420,
#            command="bash profiler/gpu_session.sh device <output of: git rev-parse HEAD>")
#    Name the kind: the profile is the H100's, and a plain call may land on an H200 (the script
#    refuses any GPU but an H100 80GB HBM3).
# 3. Back here: copy <files_at>/h100-80gb-hbm3_yi-34b_tp2/ to profiles/, set
#    `profile: profiles/h100-80gb-hbm3_yi-34b_tp2` in conf/hardware/h100_80gb_hbm3.yaml, run
#    `python -m profiler.accuracy profiles/h100-80gb-hbm3_yi-34b_tp2 --html <somewhere>.html` and commit
#    the profile (profile.csv, metadata.json) with the accuracy table (accuracy.txt) in the message.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
    grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
    mkdir -p .whl
    # Pure-Python wheels for the GPU image's Python 3.12; antlr4 4.9.3 ships only as a source
    # distribution, so build its wheel here.
    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.8 omegaconf==2.3.1
    python -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
    ls -l .whl
    ;;
device)
    commit="${2:?give the commit: bash profiler/gpu_session.sh device \$(git rev-parse HEAD)}"
    : "${OUT:?run this through the device tool, which sets OUT}"
    export PYTHONUNBUFFERED=1
    gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
    if [[ "$gpu" != *"H100 80GB HBM3"* ]]; then
        echo "error: this GPU is '$gpu'; the shipped profile is the H100 80GB HBM3's: call run with kind=nvidia-h100-x1" >&2
        exit 3
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
    start=$SECONDS
    python3 -m profiler model=yi_34b parallel.tp=2 hardware=h100_80gb_hbm3 "profiler.output_root=$OUT" \
        "profiler.git_commit=$commit" 2>&1 | tee "$OUT/profile.log"
    echo "profile: $((SECONDS - start)) s"
    python3 -m profiler.accuracy "$OUT/h100-80gb-hbm3_yi-34b_tp2" --cache-dir /tmp/fits | tee "$OUT/accuracy.txt"
    echo "total: $((SECONDS - start)) s"
    ;;
*)
    echo "usage: bash profiler/gpu_session.sh prepare | device <commit>" >&2
    exit 2
    ;;
esac
