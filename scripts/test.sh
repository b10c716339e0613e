#!/usr/bin/env bash
# Run the type check and the test suite after setup.sh, so a fresh machine (or CI) needs nothing else.
# Extra arguments go to pytest, e.g. scripts/test.sh -k sshd -x (or -n 0 for one process).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# Lint and format as [tool.ruff] in pyproject.toml says (complexity included), then types over
# synkler/ as [tool.mypy] says; either failing fails the run before any test.
.venv/bin/ruff check synkler tests bench scripts
.venv/bin/ruff format --check synkler tests bench scripts
.venv/bin/python -m mypy
# Most end-to-end tests wait on timers (ticks, backoffs, rsync), not on the CPU: several pytest-xdist
# workers overlap those waits. Each test has its own instance id, temp dirs and ports, and each worker
# its own private sshd. `--dist loadgroup` keeps an xdist_group on one worker (the modules that start
# RabbitMQ nodes of their own are two groups: at most two such modules at once); a test marked `alone`
# (it stops the shared broker, or its timing is the point) runs with the others waiting
# (tests/support/workers.py). 3 workers on 2 cores, so timers overlap without starving the agents.
exec .venv/bin/python -m pytest -q --durations=15 -n "${SYNKLER_TEST_WORKERS:-3}" --dist loadgroup "$@"
