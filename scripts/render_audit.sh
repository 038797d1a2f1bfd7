#!/usr/bin/env bash
# Screenshot an audit report in headless Chromium (Debian package `chromium`), to check that it renders.
# usage: scripts/render_audit.sh OUT_DIR [SHOT.png]   (OUT_DIR holds report.html; the shot defaults to OUT_DIR/report.png)
set -euo pipefail
dir=$(cd "${1:?usage: $0 OUT_DIR [SHOT.png]}" && pwd)
shot=${2:-$dir/report.png}
[ -f "$dir/report.html" ] || { echo "error: $dir/report.html not found" >&2; exit 2; }
command -v /usr/bin/chromium >/dev/null || { echo "error: install chromium (apt-get install -y chromium)" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
/usr/bin/chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
    --screenshot="$shot" --window-size="${WINDOW:-1200,2000}" "file://$dir/report.html" 2>/dev/null
echo "$shot"
