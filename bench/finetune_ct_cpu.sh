#!/usr/bin/env bash
# The CPU fine-tune behind RESULTS.md: train on two CT series, validate/test on the third.
# Usage: bench/finetune_ct_cpu.sh RUNS_DIR   (SHARED defaults to ../shared beside the checkout)
set -euo pipefail
RUNS=${1:?runs folder}
SHARED=${SHARED:-$(cd "$(dirname "$0")/../../shared" && pwd)}
CT=$SHARED/data/ct
PY=${PY:-.venv/bin/python}
TRAIN="$CT/cptac-lscc_C3N-00247_chest $CT/ge-head_dcm-qa-ct"
TEST="$CT/lung-pet-ct-dx_Lung_Dx-A0002_chest"
COMMON="--data $TRAIN --val-data $TEST --cache-dir $RUNS/cache --hr-patch 128 --batch 4 --lr 2e-4
        --degradations off --val-every 100 --ckpt-every 100 --log-every 10 --val-slices 4 --threads 2"
# RealESRGAN x4plus (16.7M params) from the official general-domain weights.
$PY -m dicom_node.cli train --preset realesrgan --init "$SHARED/weights/RealESRGAN_x4plus.pth" \
    --out "$RUNS/realesrgan_x4plus" --steps ${STEPS_X4PLUS:-600} $COMMON
# The small demo model: RealESRGAN anime_6B (4.5M params) from its official weights.
$PY -m dicom_node.cli train --preset realesrgan --init "$SHARED/weights/RealESRGAN_x4plus_anime_6B.pth" \
    --out "$RUNS/realesrgan_anime6b" --steps ${STEPS_ANIME:-800} $COMMON
