#!/usr/bin/env bash
# Reproduce the README's "Results" rows for one training config and seed:
#   bash examples/chest_xray_results.sh CONFIG SEED OUT_DIR [DATA_ROOT]
# trains on DATA_ROOT/train/NORMAL only, then evaluates on DATA_ROOT/test_dev with the
# threshold picked on DATA_ROOT/val, once per score. Every report lands in
# OUT_DIR/<score>/report.json (its "val_auroc" is the AUROC on DATA_ROOT/val); training
# time in OUT_DIR/train_seconds.txt.
# MODE and SCORES pick what is evaluated (default: the critic's scores and the no-GAN
# baseline; for the DCGAN: MODE=encoder SCORES="lung-opacity fused anogan").
# TRAIN_ARGS adds train-gan flags (e.g. TRAIN_ARGS="--epochs 0": the critic alone).
set -euo pipefail
CONFIG=$1 SEED=$2 OUT=$3 DATA=${4:-../shared/data/chest_xray}
MODE=${MODE:-critic}
SCORES=${SCORES:-density logit lung-brightness}
mkdir -p "$OUT"
if [ ! -f "$OUT/train_seconds.txt" ]; then
    start=$(date +%s)
    # shellcheck disable=SC2086
    anomaly train-gan --config "$CONFIG" --data "$DATA/train/NORMAL" --out "$OUT/run" \
        --seed "$SEED" --no-progress ${TRAIN_ARGS:-}
    echo $(( $(date +%s) - start )) > "$OUT/train_seconds.txt"
fi
for score in $SCORES; do
    anomaly evaluate --model "$OUT/run" --data "$DATA/test_dev" --val "$DATA/val" \
        --out "$OUT/$score" --mode "$MODE" --score "$score" --no-progress
done
