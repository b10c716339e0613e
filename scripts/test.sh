#!/usr/bin/env bash
# Run the type check and the test suite after setup.sh, so a fresh machine (or CI) needs nothing else.
# Extra arguments go to pytest, e.g. scripts/test.sh -k sshd -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# Lint and format as [tool.ruff] in pyproject.toml says (complexity included), then types over
# synkler/ as [tool.mypy] says; either failing fails the run before any test.
.venv/bin/ruff check synkler tests bench
.venv/bin/ruff format --check synkler tests bench
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest -q --durations=15 "$@"
