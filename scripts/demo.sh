#!/usr/bin/env bash
# Run `synkler demo` (all three roles plus a private sshd, on this machine) after making
# sure everything it needs is installed and RabbitMQ is up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/synkler demo "$@"
