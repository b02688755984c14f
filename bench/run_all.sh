#!/usr/bin/env bash
# Run the three benchmarks one after another (on an otherwise idle machine) and keep
# their printed tables and JSON figures:
#   bash bench/run_all.sh RUN_DIR OUT_DIR [DATA_ROOT] [extra args for every script]
set -euo pipefail
RUN=$1 OUT=$2 DATA=${3:-../shared/data/chest_xray}
shift $(( $# < 3 ? $# : 3 ))
mkdir -p "$OUT"
python bench/bench_score.py --model "$RUN" --data "$DATA/test_dev" --images 64 --repeats 3 \
    --profile --json "$OUT/score.json" "$@" | tee "$OUT/score.md"
python bench/bench_train.py --data "$DATA/train/NORMAL" --config configs/chest_xray.yaml \
    --steps 20 --repeats 3 --json "$OUT/train.json" "$@" | tee "$OUT/train.md"
python bench/bench_memory.py --model "$RUN" --data "$DATA/test_dev" --counts 100,10000 \
    --json "$OUT/memory.json" "$@" | tee "$OUT/memory.md"
