#!/usr/bin/env bash
# The GPU check of issue #16 in one command (docs/performance.md, "bench/gpu/run.sh: the GPU check"):
#
#   bash bench/gpu/run.sh                                 # on a CUDA machine; OUT=DIR gets gpu-check.{json,md}
#   nice -n 10 bash bench/gpu/run.sh --device cpu --quick # smoke test with tiny shapes on CPU
#
# Installs and downloads nothing. Python: $PYTHON if set, else the project's .venv if it imports torch, else
# python3. It prints one line and exits 2 when a needed package is missing or no CUDA device is visible;
# every other flag goes to bench/gpu/gpu_bench.py (--help lists them).
set -u
cd "$(dirname "$0")/../.." || exit 2
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    PYTHON=.venv/bin/python
  else
    PYTHON=python3
  fi
fi
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "gpu check: no Python interpreter '$PYTHON': set PYTHON or create .venv (make install)" >&2
  exit 2
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
exec "$PYTHON" bench/gpu/gpu_bench.py "$@"
