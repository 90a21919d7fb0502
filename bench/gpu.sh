#!/usr/bin/env bash
# The GPU checks, in one script for one H100/H200, in under 12 minutes (bench/RESULTS.md, "GPU").
#
# Here, once, to carry what the GPU machine's Python (3.12, torch, transformers, pyarrow, ...) lacks:
#     bench/gpu_wheels.sh            # downloads the wheels into .whl/ (git-ignored)
# There, from the repository root:
#     bash bench/gpu.sh              # prints the test results and one JSON report; copies it to $OUT
#
# 1. installs the carried wheels into /tmp/site (nothing is fetched: the machine has no network);
# 2. runs the tests that exercise CUDA (tests/test_cuda.py, and the SAE formula tests on the GPU);
# 3. runs bench/bench_gpu.py: SAE training at d_in 4096 / d_sae 65,536, the dump on a full-size
#    random-weight LLaVA-NeXT-7B against its bare forward, and scoring;
# 4. runs bench/bench_reader.py: the activation stream's MB/s at d_in 4096 on the machine's cores,
#    and training tok/s on the device reading the dump against the same batches in memory.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/saev-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt" || true
# -p no:cacheprovider: the working tree may be read-only; the conftest's demo world is not needed here
timeout 180 $PY -m pytest -q -p no:cacheprovider --noconftest tests/test_cuda.py 2>&1 | tee "$OUT/tests.txt"
timeout 330 $PY bench/bench_gpu.py 2> >(tee "$OUT/bench_gpu.log" >&2) | tee "$OUT/bench_gpu.json"
timeout 90 $PY bench/bench_reader.py --d-in 4096 --rows 65536 --workers 1 4 --repeats 1 --json | tee "$OUT/bench_reader.json"
timeout 120 $PY bench/bench_reader.py --train --device cuda --workers 2 --repeats 2 --train-steps 400 | tee "$OUT/bench_reader_train.json"
