#!/usr/bin/env bash
# Installs what fogmesh needs from the distribution when it is missing:
# mosquitto and its clients, Python's venv module, a C/C++ toolchain and cmake
# (llama-cpp-python builds from source). Debian and Ubuntu.
# With --test, also what the tests need: Chromium for the web dashboard's browser test,
# ejabberd, whose MQTT 5 broker the site tests run on as well as on mosquitto, and Prometheus
# for its promtool, which checks and unit-tests the alert rules in deploy/prometheus/.
set -euo pipefail
need=()
if [ "${1:-}" = "--test" ]; then
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium)
    ls -d /usr/lib/*/ejabberd-[0-9]* >/dev/null 2>&1 || need+=(ejabberd)
    command -v promtool >/dev/null 2>&1 || need+=(prometheus)
fi
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
command -v g++ >/dev/null 2>&1 || need+=(build-essential)
command -v cmake >/dev/null 2>&1 || need+=(cmake)
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "fogmesh needs: ${need[*]}; install them with your package manager" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing from the distribution: ${need[*]}"
$sudo apt-get update -qq
# Only promtool is wanted from the prometheus package: its service must not start (it would scrape
# and listen on 9090). invoke-rc.d and deb-systemd-invoke ask policy-rc.d first, and 101 says no;
# one is put in place for this install only, unless the machine already has its own.
if [[ " ${need[*]} " == *" prometheus "* ]] && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod 755 /usr/sbin/policy-rc.d
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
fi
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
# The Debian package enables a system-wide mosquitto on 1883; fogmesh starts its own.
# So does ejabberd's (XMPP, and MQTT on 1883 too); the tests start their own on a loopback port.
if [[ " ${need[*]} " == *" ejabberd "* ]] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now ejabberd >/dev/null 2>&1 || true
fi
if [[ " ${need[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
