#!/usr/bin/env bash
# The figures of docs/model_card.md, for the bundled pretrained critic (or MODEL=RUN):
#   bash examples/pretrained_figures.sh OUT_DIR [DATA_ROOT]
# AUROC on test_dev/ (threshold from val/) and on val/, beside lung brightness, and the
# false-positive rate at --alpha 0.05 on the normal films of the training hospital (val/)
# and of another (test_dev/).
set -euo pipefail
OUT=$1 DATA=${2:-../shared/data/chest_xray}
MODEL=${MODEL:-pretrained}
mkdir -p "$OUT"
for score in density+quiet density lung-brightness; do
    anomaly evaluate --model "$MODEL" --data "$DATA/test_dev" --val "$DATA/val" \
        --out "$OUT/test_dev_$score" --score "$score" --no-progress
    anomaly evaluate --model "$MODEL" --data "$DATA/val" \
        --out "$OUT/val_$score" --score "$score" --no-progress
done
for split in val test_dev; do
    anomaly score --model "$MODEL" --dir "$DATA/$split/NORMAL" --alpha 0.05 \
        --out "$OUT/${split}_normal_alpha.csv" --no-progress > /dev/null
    python - "$OUT/${split}_normal_alpha.csv" "$split" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
flagged = sum(row["label"] == "anomalous" for row in rows)
print(f"{sys.argv[2]}/NORMAL at alpha 0.05: {flagged} of {len(rows)} flagged "
      f"({100 * flagged / len(rows):.1f}%)")
PY
done
