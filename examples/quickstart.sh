#!/usr/bin/env bash
# On the bundled normal chest X-rays: train a tiny model of the recommended kind (the
# DCGAN discriminator taught to find synthetic opacities) and a tiny plain DCGAN with an
# encoder, then score a few normal and pneumonia images from the held-out sample.
# About a minute on a laptop CPU.
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-output}
anomaly train-gan --data data/train/NORMAL --out "$OUT/critic" --image-size 32 --epochs 3 \
    --batch-size 16 --no-progress
echo "== default: density of the discriminator's features (one pass) =="
anomaly score --model "$OUT/critic" --dir data/test --out "$OUT/scores_density.csv" \
    --heatmaps "$OUT/heatmaps_density" --no-progress
anomaly train-gan --data data/train/NORMAL --out "$OUT/dcgan" --config ../configs/dcgan64.yaml \
    --image-size 32 --epochs 3 --batch-size 16 --encoder-epochs 2 --no-progress
echo "== DCGAN: AnoGAN latent search (200 iterations) =="
anomaly score --model "$OUT/dcgan" --dir data/test --mode search --iterations 200 \
    --score anogan --out "$OUT/scores_search.csv" --heatmaps "$OUT/heatmaps_search" --no-progress
echo "== DCGAN: f-AnoGAN encoder, lung-opacity score =="
anomaly score --model "$OUT/dcgan" --dir data/test --mode encoder --score lung-opacity \
    --out "$OUT/scores_encoder.csv" --no-progress
echo "heatmaps: $OUT/heatmaps_*; TensorBoard: tensorboard --logdir $OUT"
