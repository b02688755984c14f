#!/usr/bin/env bash
# Train a tiny DCGAN on the bundled normal chest X-rays, then score a few normal and
# pneumonia images from the held-out sample. Runs in about a minute on a laptop CPU.
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-output}
anomaly train-gan --data data/train/NORMAL --out "$OUT/run" --config ../configs/dcgan64.yaml \
    --image-size 32 --epochs 3 --batch-size 16 --encoder-epochs 2 --no-progress
echo "== AnoGAN latent search (200 iterations) =="
anomaly score --model "$OUT/run" --dir data/test --mode search --iterations 200 \
    --out "$OUT/scores_search.csv" --heatmaps "$OUT/heatmaps" --no-progress
echo "== f-AnoGAN encoder =="
anomaly score --model "$OUT/run" --dir data/test --mode encoder --out "$OUT/scores_encoder.csv" \
    --no-progress
echo "heatmaps: $OUT/heatmaps; TensorBoard: tensorboard --logdir $OUT/run"
