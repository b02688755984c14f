#!/usr/bin/env bash
# A PNG screenshot of a report page, taken with headless Chromium (Debian/Ubuntu:
# apt install chromium; elsewhere set CHROMIUM to the browser's binary):
#   bash examples/report_screenshot.sh REPORT_DIR/report.html OUT.png [WIDTH,HEIGHT]
# The page is self-contained, so the browser needs no network.
set -euo pipefail
USAGE="usage: bash examples/report_screenshot.sh REPORT.html OUT.png [WIDTH,HEIGHT]"
PAGE=${1:?$USAGE} OUT=${2:?$USAGE} SIZE=${3:-1200,2300}
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
if [ -z "$CHROMIUM" ]; then
    echo "report_screenshot.sh: no Chromium found; install it or set CHROMIUM" >&2
    exit 1
fi
if [ ! -f "$PAGE" ]; then
    echo "report_screenshot.sh: $PAGE: no such file" >&2
    exit 1
fi
URL=$(python3 -c 'import pathlib, sys; print(pathlib.Path(sys.argv[1]).resolve().as_uri())' "$PAGE")
rm -f "$OUT"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size="$SIZE" --screenshot="$(realpath -m "$OUT")" "$URL" 2>/dev/null || true
if [ ! -s "$OUT" ]; then
    echo "report_screenshot.sh: $CHROMIUM wrote no screenshot of $PAGE" >&2
    exit 1
fi
echo "$OUT"
