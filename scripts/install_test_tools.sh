#!/usr/bin/env bash
# Tools some tests drive when present, from Debian's packages: Chromium and its WebDriver (the
# live page, tests/integration/test_http_page.py), promtool (the alert rules, from the
# prometheus package) and systemd-analyze (the unit templates). Idempotent. Each test that
# needs one skips, saying which, when it is missing; CI installs them so nothing skips there.
set -euo pipefail
need=()
command -v chromium >/dev/null && command -v chromedriver >/dev/null || need+=(chromium chromium-driver)
command -v promtool >/dev/null || need+=(prometheus)
command -v systemd-analyze >/dev/null || need+=(systemd)
[ "${#need[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "install_test_tools.sh: needs root for apt-get (missing: ${need[*]})" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d: the prometheus package must not start a server on this machine.
created=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created=1
fi
trap '[ "$created" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "install_test_tools.sh: installed ${need[*]}"
