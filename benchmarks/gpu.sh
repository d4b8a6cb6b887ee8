#!/usr/bin/env bash
# The full MedMNIST protocol (100 epochs, 3 seeds) for the study's 2D and 3D sets on one CUDA
# device in bf16, recorded into BENCHMARKS.md as sections study-<dataset>-gpu-100ep beside the CPU
# tables. Run it on a machine with a GPU when one is lent (never in CI, never in the tests):
#
#     bash benchmarks/gpu.sh                 # PneumoniaMNIST, RetinaMNIST, AdrenalMNIST3D
#     DATASETS=pneumoniamnist bash benchmarks/gpu.sh
#
# Needs the project installed (make install) and the shared data (MEDLENS_DATA or ../shared/data).
# The recipes are the study's families at MedMNIST's protocol length (100 epochs; medlens's
# optimiser, schedule and augmentation otherwise, chosen on validation as on the CPU), each seed a
# separate run; classical models are not re-run (they do not use the GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATASETS=${DATASETS:-pneumoniamnist,retinamnist,adrenalmnist3d}
GPU="+accelerator=gpu+precision=bf16-mixed+num_workers=4"

"$PY" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("benchmarks/gpu.sh needs a CUDA device (torch.cuda.is_available() is False)")
print(f"CUDA device: {torch.cuda.get_device_name(0)}, bf16: {torch.cuda.is_bf16_supported()}")
PY

for ds in ${DATASETS//,/ }; do
  case "$ds" in
    pneumoniamnist|retinamnist) deep="cnn-small:100$GPU,resnet18:100$GPU,resnet18@64:100$GPU" ;;
    adrenalmnist3d) deep="cnn-2.5d:100$GPU,resnet18-3d:100$GPU" ;;
    *) echo "gpu.sh: unknown dataset $ds" >&2; exit 2 ;;
  esac
  "$PY" benchmarks/bench_study.py --datasets "$ds" --seeds 0,1,2 --deep "$deep" --classical '' --tag gpu-100ep
done
