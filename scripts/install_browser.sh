#!/usr/bin/env bash
# The headless browser the live-page test (tests/integration/test_http_page.py) drives:
# Chromium and its WebDriver from Debian's packages. Idempotent; CI calls it from .ci/run.
# Without them that test skips and says so.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_browser.sh: needs root for apt-get (or: sudo $0)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
echo "install_browser.sh: $(chromium --version 2>/dev/null || echo chromium installed)"
