#!/usr/bin/env bash
# Download, here, the wheels bench/gpu.sh installs on the GPU machine (Python 3.12, x86-64), into
# .whl/ (git-ignored). The GPU image has torch, transformers, pyarrow, numpy, safetensors, tqdm,
# psutil, typer, pyyaml and pytest; saev's library also needs these.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 duckdb==2.0.1
ls -la .whl
