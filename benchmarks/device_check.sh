#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one call: the GPU tests, the epoch benchmark (make bench) and
# the batch-norm study over 3 seeds with trainer=gpu, each with its figures. Not run in CI: run it
# whenever the device tool lends a machine, and quote what it prints.
#   bash benchmarks/device_check.sh            # datasets from MLP_LAB_DATA, else data/
# Python: $PYTHON, else .venv/bin/python, else python3 (a machine without the venv needs torch,
# lightning, hydra-core, torchmetrics, optuna and scipy, e.g. carried as wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT_DIR=${OUT:-outputs/device_check}
mkdir -p "$OUT_DIR"
# Datasets carried gzipped (under the tool's size limit) are unpacked where the project reads them.
find "${MLP_LAB_DATA:-data}" -name '*-ubyte.gz' -exec gunzip -kf {} + 2>/dev/null || true

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

echo "== GPU tests"
"$PY" -m pytest -m gpu -q -p no:cacheprovider

echo "== make bench: seconds per epoch, side by side"
"$PY" -m benchmarks.epoch_speed

echo "== experiment=batch_norm over seeds 0,1,2 with trainer=gpu"
study="$OUT_DIR/batch_norm"
rm -rf "$study"
time "$PY" -m mlp_lab.train -m experiment=batch_norm seed=0,1,2 trainer=gpu \
	trainer.enable_progress_bar=false hydra.sweep.dir="$study"
"$PY" -m mlp_lab.report "$study" --out "$OUT_DIR"
cat "$OUT_DIR/report.md"
