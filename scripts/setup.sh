#!/usr/bin/env bash
# Bring this machine to the state synkler's demo and test suite need, doing only what is
# missing: machines are handed over fresh (CI included), so nothing may be assumed, yet a
# second run must be fast and silent because test.sh and demo.sh call this every time.
#   1. system packages: rsync, ssh client + server (for the private test sshd), python3-venv
#   2. a RabbitMQ broker answering AMQP on 127.0.0.1:5672 (installed/started if needed)
#   3. .venv with synkler installed editable plus its test extras
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

note() { echo "setup: $*" >&2; }
die() {
    echo "setup: error: $*" >&2
    exit 1
}

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=()
fi

# sudo drops most of the environment, so DEBIAN_FRONTEND goes through env(1).
APT=(env DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o Dpkg::Use-Pty=0)
apt_updated=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "missing: $* (no apt-get here; install them by hand)"
    if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
        die "missing: $* (not root and no sudo; install them by hand)"
    fi
    if [ "$apt_updated" -eq 0 ]; then
        "${SUDO[@]}" "${APT[@]}" update >/dev/null || die "apt-get update failed"
        apt_updated=1
    fi
    note "installing $*"
    "${SUDO[@]}" "${APT[@]}" install --no-install-recommends "$@" >/dev/null ||
        die "apt-get install $* failed"
}

# sbin is not on a normal user's PATH, yet that is where sshd and rabbitmq-server live.
have() { PATH="$PATH:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1; }

# ---- 1. system packages ----------------------------------------------------------------
VENV_PY="$ROOT/.venv/bin/python"
missing=()
have rsync || missing+=(rsync)
{ have ssh && have ssh-keygen; } || missing+=(openssh-client)
have sshd || missing+=(openssh-server)
if ! have python3; then
    missing+=(python3 python3-venv)
elif [ ! -x "$VENV_PY" ] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    # Debian splits ensurepip out of python3; without it `python3 -m venv` fails.
    missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi

# ---- 2. RabbitMQ -----------------------------------------------------------------------
BROKER_HOST=${SYNKLER_TEST_BROKER_HOST:-127.0.0.1}
BROKER_PORT=${SYNKLER_TEST_BROKER_PORT:-5672}

# A broker answers the AMQP 0-9-1 protocol header; a bare TCP connect could be anything.
amqp_answers() {
    python3 - "$BROKER_HOST" "$BROKER_PORT" <<'PY'
import socket
import sys

try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        sys.exit(0 if sock.recv(8) else 1)
except OSError:
    sys.exit(1)
PY
}

if ! amqp_answers; then
    if [ -n "${SYNKLER_TEST_BROKER_HOST:-}${SYNKLER_TEST_BROKER_PORT:-}" ]; then
        die "no AMQP broker answers on $BROKER_HOST:$BROKER_PORT (set by SYNKLER_TEST_BROKER_*); not starting a local one"
    fi
    have rabbitmq-server || apt_install rabbitmq-server
    # The package may have started it from its postinst; only start it if still silent.
    if ! amqp_answers; then
        start_log=$(mktemp)
        if [ -d /run/systemd/system ]; then
            note "starting rabbitmq-server (systemctl)"
            "${SUDO[@]}" systemctl start rabbitmq-server >"$start_log" 2>&1 || true
        else
            note "starting rabbitmq-server (-detached)"
            "${SUDO[@]}" env PATH="$PATH:/usr/sbin:/sbin" rabbitmq-server -detached >"$start_log" 2>&1 || true
        fi
        deadline=$((SECONDS + 90))
        until amqp_answers; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                cat "$start_log" >&2
                rm -f "$start_log"
                die "RabbitMQ did not answer on $BROKER_HOST:$BROKER_PORT within 90 s (see /var/log/rabbitmq/)"
            fi
            sleep 1
        done
        rm -f "$start_log"
        note "rabbitmq-server is up on $BROKER_HOST:$BROKER_PORT"
    fi
fi

# ---- 3. virtualenv ---------------------------------------------------------------------
if [ ! -x "$VENV_PY" ]; then
    note "creating .venv"
    python3 -m venv "$ROOT/.venv" || die "python3 -m venv failed"
fi

STAMP="$ROOT/.venv/.synkler-installed"
# Run from / so the checkout itself is not on sys.path: only a real install counts, and
# only one that points at this checkout (a copied .venv would import another tree).
installed_here() {
    (cd / && "$VENV_PY" - "$ROOT" <<'PY'
import os
import sys

try:
    import pytest  # noqa: F401
    import synkler
except ImportError:
    sys.exit(1)
here = os.path.realpath(os.path.join(sys.argv[1], "synkler"))
sys.exit(0 if os.path.realpath(os.path.dirname(synkler.__file__)) == here else 1)
PY
    ) >/dev/null 2>&1
}

if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || ! installed_here; then
    note "installing synkler into .venv (pip install -e '.[test]')"
    PIP_ROOT_USER_ACTION=ignore "$VENV_PY" -m pip install -q --disable-pip-version-check -e "${ROOT}[test]" ||
        die "pip install -e '.[test]' failed"
    touch "$STAMP"
fi
