#!/usr/bin/env bash
# A PNG screenshot of a report page, taken with headless Chromium (Debian/Ubuntu:
# apt install chromium; elsewhere set CHROMIUM to the browser's binary):
#   bash examples/report_screenshot.sh REPORT_DIR/report.html OUT.png [WIDTH,HEIGHT]
# The page is self-contained, so the browser needs no network.
set -euo pipefail
PAGE=$1 OUT=$2 SIZE=${3:-1200,2300}
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
if [ -z "$CHROMIUM" ]; then
    echo "report_screenshot.sh: no Chromium found; install it or set CHROMIUM" >&2
    exit 1
fi
"$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size="$SIZE" --screenshot="$(realpath -m "$OUT")" \
    "file://$(realpath "$PAGE")" 2>/dev/null
echo "$OUT"
