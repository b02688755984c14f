#!/usr/bin/env bash
# A fixed tiny run, trained (seed 3, one thread) and scored in every mode, exported and
# scored exported, with a hash of every checkpoint tensor: run it before and after a
# change that must not change behaviour, then compare the two folders:
#   bash examples/fixed_run_check.sh /tmp/before   # ... change ...
#   bash examples/fixed_run_check.sh /tmp/after
#   diff /tmp/before/tensors.txt /tmp/after/tensors.txt && for f in /tmp/before/*.csv; do
#       cmp "$f" "/tmp/after/$(basename "$f")"; done    # and the maps_*/ PNGs likewise
set -euo pipefail
OUT=$(realpath -m "$1")
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
rm -rf "$OUT"; mkdir -p "$OUT"
anomaly train-gan --data examples/data/train --out "$OUT/run" --image-size 32 --critic-epochs 1 \
    --epochs 1 --batch-size 16 --encoder-epochs 1 --no-progress --seed 3 > "$OUT/train.log" 2>&1
for mode in critic discriminator encoder encoder-search search; do
    anomaly score --model "$OUT/run" --dir examples/data/test --mode $mode --out "$OUT/$mode.csv" \
        --heatmaps "$OUT/maps_$mode" $( [ $mode = search ] && echo --iterations 5 ) --no-progress > /dev/null 2>&1
done
anomaly export --model "$OUT/run" --out "$OUT/export" > /dev/null 2>&1
anomaly score --model "$OUT/export" --dir examples/data/test --out "$OUT/exported.csv" --no-progress > /dev/null 2>&1
python - "$OUT" <<'PY'
import sys, torch, hashlib
s = torch.load(f"{sys.argv[1]}/run/checkpoints/last.pt", weights_only=True)
def walk(x, p=""):
    if torch.is_tensor(x): yield p, hashlib.sha256(x.numpy().tobytes()).hexdigest()[:12]
    elif isinstance(x, dict):
        for k in sorted(x): yield from walk(x[k], f"{p}.{k}")
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x): yield from walk(v, f"{p}[{i}]")
with open(f"{sys.argv[1]}/tensors.txt", "w") as f:
    for p, h in walk({k: v for k, v in s.items() if k not in ("data_dir",)}): f.write(f"{p} {h}\n")
PY
