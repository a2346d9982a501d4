#!/usr/bin/env bash
# Browser tests: installs Debian's Chromium and playwright-core when missing, then runs them.
set -euo pipefail
cd "$(dirname "$0")"
# Chromium, and a CJK font so that the Chinese labels in the screenshots are not empty boxes.
if [ ! -x /usr/bin/chromium ] || ! fc-list :lang=zh 2>/dev/null | grep -q .; then
  echo "Installing Debian's chromium and a CJK font for the browser tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null
fi
if [ ! -d node_modules/playwright-core ]; then
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --silent; else npm install --no-audit --no-fund --silent; fi
fi
node --test
