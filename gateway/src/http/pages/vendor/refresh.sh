#!/usr/bin/env bash
# The third-party scripts the pages embed, fetched from npm at the exact versions pinned here
# (package.json, with their integrity in package-lock.json) and copied unchanged into ../assets,
# where pages/mod.rs compiles them into the gateway. Run it after changing a pinned version:
#   gateway/src/http/pages/vendor/refresh.sh      (or: make vendor)
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --silent
# Chart.js (MIT): its UMD build defines the global `Chart`; it bundles @kurkle/color (MIT).
cp node_modules/chart.js/dist/chart.umd.min.js ../assets/chart.umd.min.js
cp node_modules/chart.js/LICENSE.md ../assets/chart.js.LICENSE.md
cp node_modules/@kurkle/color/LICENSE ../assets/kurkle-color.LICENSE.md
echo "Copied chart.js $(node -p "require('./node_modules/chart.js/package.json').version") into ../assets"
