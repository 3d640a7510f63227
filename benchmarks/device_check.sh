#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one call of at most 8 minutes on one GPU: the GPU tests, the
# epoch benchmark (make bench: mlp_lab's epoch against a bare torch loop, float32 and bf16), and two
# studies of the lab with 1, 4 and 8 runs sharing the GPU (hydra.launcher.jobs_per_device), timed.
# Not run in CI: run it whenever the device tool lends a machine, and quote what it prints.
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

echo "== the loss and batch_norm studies (3 seeds, 3 epochs, bf16) with 1, 4 and 8 runs per GPU"
# Nothing else runs meanwhile: each row's seconds are the whole `make lab`, report included.
times="$OUT_DIR/jobs_per_device.txt"
: > "$times"
for per in 1 4 8; do
	start=$(date +%s%N)
	# -o: the machine's Python as it is, no venv made.
	make --no-print-directory -o .venv/.installed lab PY="$PY" STUDIES="loss batch_norm" SEEDS=0,1,2 XOR_SEEDS=2 \
		LAB="$OUT_DIR/lab_$per" JOBS="$per" \
		ARGS="trainer=bf16 trainer.max_epochs=3 hydra.launcher.jobs_per_device=$per" >"$OUT_DIR/lab_$per.log" 2>&1 \
		|| { echo "make lab with $per per GPU failed:"; tail -20 "$OUT_DIR/lab_$per.log"; }
	echo "$per $(( ($(date +%s%N) - start) / 1000000 ))" >> "$times"
done
echo "| runs per GPU | wall s (24 runs) |"
echo "|---|---|"
awk '{ printf "| %s | %.1f |\n", $1, $2 / 1000 }' "$times"
sed -n '1,12p' "$OUT_DIR/lab_4/report.md"
