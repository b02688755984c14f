#!/usr/bin/env bash
# Train a tiny model of the recommended kind (a DCGAN whose discriminator also learns
# synthetic opacities) on the bundled normal chest X-rays, then score a few normal and
# pneumonia images from the held-out sample three ways. About a minute on a laptop CPU.
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-output}
anomaly train-gan --data data/train/NORMAL --out "$OUT/run" --image-size 32 --epochs 3 \
    --batch-size 16 --encoder-epochs 2 --no-progress
echo "== default: density of the discriminator's features (one pass) =="
anomaly score --model "$OUT/run" --dir data/test --out "$OUT/scores_density.csv" \
    --heatmaps "$OUT/heatmaps_density" --no-progress
echo "== AnoGAN latent search (200 iterations) =="
anomaly score --model "$OUT/run" --dir data/test --mode search --iterations 200 \
    --score anogan --out "$OUT/scores_search.csv" --heatmaps "$OUT/heatmaps_search" --no-progress
echo "== f-AnoGAN encoder =="
anomaly score --model "$OUT/run" --dir data/test --mode encoder --score lung-opacity \
    --out "$OUT/scores_encoder.csv" --no-progress
echo "heatmaps: $OUT/heatmaps_*; TensorBoard: tensorboard --logdir $OUT/run"
