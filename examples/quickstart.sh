#!/usr/bin/env bash
# First, a real result in seconds: the bundled pretrained critic scores the example films
# (normal and pneumonia) and draws their opacity maps with regions. Then, on the bundled
# normal chest X-rays: train a tiny model of the recommended kind (the
# opacity critic, then a DCGAN with its f-AnoGAN encoder, in one run), then score a few
# normal and pneumonia images from the held-out sample with the critic (the default),
# AnoGAN latent search and the encoder. About a minute on a laptop CPU.
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-output}
echo "== the bundled pretrained critic (docs/model_card.md): scores, maps and regions =="
anomaly score --dir data/test --out "$OUT/scores_pretrained.csv" --regions \
    --heatmaps "$OUT/heatmaps_pretrained" --no-progress
anomaly train-gan --data data/train/NORMAL --out "$OUT/run" --overwrite --image-size 32 \
    --critic-epochs 5 --epochs 3 --batch-size 16 --encoder-epochs 2 --no-progress
echo "== default: the critic's feature density (one pass), with heat maps =="
anomaly score --model "$OUT/run" --dir data/test --out "$OUT/scores_critic.csv" \
    --heatmaps "$OUT/heatmaps_critic" --no-progress
echo "== the same run's DCGAN: AnoGAN latent search (200 iterations) =="
anomaly score --model "$OUT/run" --dir data/test --mode search --iterations 200 \
    --score anogan --out "$OUT/scores_search.csv" --heatmaps "$OUT/heatmaps_search" --no-progress
echo "== the same run's f-AnoGAN encoder, lung-opacity score =="
anomaly score --model "$OUT/run" --dir data/test --mode encoder --score lung-opacity \
    --out "$OUT/scores_encoder.csv" --no-progress
echo "heatmaps: $OUT/heatmaps_*; TensorBoard: tensorboard --logdir $OUT"
