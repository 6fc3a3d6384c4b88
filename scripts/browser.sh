#!/usr/bin/env bash
# Makes sure a headless browser is there for the page test (tests/page.rs): Debian's
# chromium and its WebDriver, chromedriver, installed when missing.
set -euo pipefail
if command -v chromedriver >/dev/null 2>&1 && { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then
  exit 0
fi
echo "== installing chromium and chromium-driver" >&2
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >&2
command -v chromedriver >/dev/null 2>&1
