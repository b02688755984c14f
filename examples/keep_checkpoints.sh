#!/usr/bin/env bash
# Keep a copy of a run's checkpoint each time training rewrites it (once per epoch), until
# the run's training ends; for examples/critic_average_probe.py:
#   bash examples/keep_checkpoints.sh RUN_DIR OUT_DIR [STOP_FILE] &
# STOP_FILE (default RUN_DIR/../train_seconds.txt, which chest_xray_results.sh writes when
# training ends) stops it. Checkpoints are written atomically, so each copy is whole.
# It looks every 3 s: an epoch shorter than that (a tiny run, a GPU) may go uncopied.
set -euo pipefail
RUN=$1 OUT=$2 STOP=${3:-$1/../train_seconds.txt}
CHECKPOINT=$RUN/checkpoints/last.pt
mkdir -p "$OUT"
seen="" count=0
keep_if_new() {  # each save is a rename onto the name: a new inode
    if [ -f "$CHECKPOINT" ]; then
        stamp=$(stat -c %i.%Y.%s "$CHECKPOINT")
        if [ "$stamp" != "$seen" ]; then
            cp "$CHECKPOINT" "$OUT/$(printf 'copy_%03d.pt' "$count")"
            seen=$stamp count=$((count + 1))
        fi
    fi
}
until [ -f "$STOP" ]; do
    keep_if_new
    sleep 3
done
keep_if_new  # the last save may have landed with the stop file
echo "kept $count copies of $CHECKPOINT in $OUT"
