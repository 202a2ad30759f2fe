#!/usr/bin/env bash
# The CPU fine-tunes behind RESULTS.md: train on two CT series, validate/test on the third.
# Usage: bench/finetune_ct_cpu.sh RUNS_DIR   (SHARED defaults to ../shared beside the checkout)
# Both runs go in parallel with one torch thread each (the 2-core machine is shared).
set -euo pipefail
RUNS=${1:?runs folder}
mkdir -p "$RUNS"
SHARED=${SHARED:-$(cd "$(dirname "$0")/../../shared" && pwd)}
CT=$SHARED/data/ct
PY=${PY:-.venv/bin/python}
TRAIN="$CT/cptac-lscc_C3N-00247_chest $CT/ge-head_dcm-qa-ct"
TEST="$CT/lung-pet-ct-dx_Lung_Dx-A0002_chest"
COMMON="--data $TRAIN --val-data $TEST --hr-patch 96 --batch 4 --lr 2e-4 --degradations off
        --val-every 100 --ckpt-every 50 --log-every 10 --val-slices 3 --threads 1 --no-progress"
# RealESRGAN x4plus (16.7M params) from the official general-domain weights; on CPU only the
# last 4 RRDB blocks, conv_body and the upsampler train (3.0M of 16.7M params), the rest is frozen.
$PY -m srnode train --preset realesrgan --init "$SHARED/weights/RealESRGAN_x4plus.pth" \
    --out "$RUNS/realesrgan_x4plus" --steps "${STEPS_X4PLUS:-400}" --cache-dir "$RUNS/cache_x4plus" \
    --trainable 'model\.(1\.sub\.(19|2[0-3])|3|6|8|10)\.' $COMMON > "$RUNS/realesrgan_x4plus.log" 2>&1 &
# The small demo model: RealESRGAN anime_6B (4.5M params), all layers, from its official weights.
$PY -m srnode train --preset realesrgan --init "$SHARED/weights/RealESRGAN_x4plus_anime_6B.pth" \
    --out "$RUNS/realesrgan_anime6b" --steps "${STEPS_ANIME:-600}" --cache-dir "$RUNS/cache_anime6b" \
    $COMMON > "$RUNS/realesrgan_anime6b.log" 2>&1 &
wait
