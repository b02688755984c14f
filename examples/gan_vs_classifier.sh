#!/usr/bin/env bash
# The supervised baseline beside the GAN default, on the same test images:
#   bash examples/gan_vs_classifier.sh GAN_RUN OUT_DIR [CLASSIFY_CONFIG] [DATA_ROOT]
# GAN_RUN is a trained `anomaly train-gan` run (e.g. runs/final_s0/run from
# examples/chest_xray_results.sh). Trains the classifier on DATA_ROOT/train (both classes,
# class-weighted; skipped once a fit has finished there), evaluates both on
# DATA_ROOT/test_dev with the threshold from DATA_ROOT/val, and compares them:
# OUT_DIR/{gan_report,classifier_report,comparison}/report.html, comparison.md, one ROC.
# The classifier's training time lands in OUT_DIR/classifier_train_seconds.txt.
set -euo pipefail
USAGE="usage: bash examples/gan_vs_classifier.sh GAN_RUN OUT_DIR [CLASSIFY_CONFIG] [DATA_ROOT]"
GAN=${1:?$USAGE} OUT=${2:?$USAGE}
CONFIG=${3:-configs/classify_resnet50_scratch.yaml} DATA=${4:-../shared/data/chest_xray}
mkdir -p "$OUT"
# written only when a fit has finished, so an interrupted one is trained again
if [ ! -f "$OUT/classifier_train_seconds.txt" ]; then
    start=$(date +%s)
    classify fit --config "$CONFIG" --data "$DATA/train" --val "$DATA/val" \
        --out "$OUT/classifier" --no-progress
    echo $(( $(date +%s) - start )) > "$OUT/classifier_train_seconds.txt"
fi
classify evaluate --model "$OUT/classifier" --data "$DATA/test_dev" --val "$DATA/val" \
    --out "$OUT/classifier_report" --no-progress
anomaly evaluate --model "$GAN" --data "$DATA/test_dev" --val "$DATA/val" \
    --out "$OUT/gan_report" --no-progress
anomaly compare "$OUT/gan_report" "$OUT/classifier_report" --out "$OUT/comparison"
