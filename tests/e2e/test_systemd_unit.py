"""systemd/synkler@.service: systemd's own checks where systemd-analyze exists, and what the unit
promises about the agent (exit statuses, stop timeout, state directory, documentation)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from synkler.config import KEYS
from synkler.errors import ExitStatus

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.9 and 3.10 have no tomllib; the static checks need only the unit
    tomllib = None

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "synkler@.service"
INSTALLED_COMMAND = "/opt/synkler/bin/synkler"


DOCS = REPO / "docs" / "installing.md"
DROP_IN = "# /etc/systemd/system/synkler@.service.d/user-per-role.conf"


def directives(*drop_ins: str) -> dict[str, list[str]]:
    """Each directive of the unit and its values, in order (comments and sections dropped), with
    `drop_ins` (their text) applied after it as systemd does: an empty assignment resets a list."""
    out: dict[str, list[str]] = {}
    for text in (UNIT.read_text(), *drop_ins):
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";", "[")):
                continue
            key, _, value = line.partition("=")
            values = out.setdefault(key.strip(), [])
            if value.strip():
                values.append(value.strip())
            else:
                values.clear()
    return out


def documented_drop_in() -> str:
    """The drop-in docs/installing.md gives for several roles on one host, as written there."""
    blocks = re.findall(r"^```\n(.*?)^```", DOCS.read_text(), re.M | re.S)
    (block,) = [b for b in blocks if b.startswith(DROP_IN + "\n")]
    return block


def seconds(span: str) -> float:
    """A systemd time span such as 62min, 5min 30s or 90 in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "hr": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span):
        total += float(number) * units[unit]
    return total


def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze not installed (package systemd): the unit's static checks still ran")
    return path


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    """An instance of the template, its ExecStart pointed at this checkout's synkler command (the
    one thing verify checks on the host that the unit's /opt/synkler install does not give here)."""
    command = Path(sys.executable).with_name("synkler")
    if not command.exists():
        pytest.skip(f"no synkler command next to {sys.executable} (pip install -e . first)")
    unit = tmp_path / "synkler@upload.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED_COMMAND, str(command)))
    return unit


def test_the_unit_passes_systemd_analyze_verify(instance: Path) -> None:
    run = subprocess.run([analyze(), "verify", str(instance)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and not run.stderr.strip(), run.stderr


def test_the_documented_drop_in_for_a_user_per_role_passes_verify(instance: Path) -> None:
    # Drop-ins of the template apply to each instance; verify reads them and reports a mistyped key.
    drop_ins = instance.parent / "synkler@.service.d"
    drop_ins.mkdir()
    (drop_ins / "user-per-role.conf").write_text(documented_drop_in())
    run = subprocess.run([analyze(), "verify", str(instance)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and not run.stderr.strip(), run.stderr


def test_the_documented_drop_in_gives_each_role_its_own_user_and_only_its_own_state_directory() -> None:
    # The agent takes the first directory of $STATE_DIRECTORY: the shared one must be gone, not
    # merely followed by the role's.
    d = directives(documented_drop_in())
    assert d["User"][-1] == d["Group"][-1] == "synkler-%i"  # one value each: the last one given counts
    assert d["StateDirectory"] == ["synkler-%i"] and d["LogsDirectory"] == ["synkler-%i"]


def test_the_units_exposure_level_is_4_or_better(instance: Path) -> None:
    run = subprocess.run(
        [analyze(), "security", "--offline=true", "--no-pager", str(instance)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", run.stdout)
    assert found, run.stdout + run.stderr
    assert float(found.group(1)) <= 4.0, run.stdout


def test_the_unit_waits_for_readiness_and_feeds_a_watchdog() -> None:
    d = directives()
    assert d["Type"] == ["notify"]
    assert seconds(d["WatchdogSec"][0]) >= 150  # the longest legitimate block in a step: 120 s
    assert "--foreground" in d["ExecStart"][0]  # `daemon: true` in the config must not detach here


def test_the_unit_restarts_a_crash_but_not_a_bad_configuration() -> None:
    d = directives()
    assert d["Restart"] == ["on-failure"]
    assert d["RestartPreventExitStatus"] == [str(int(ExitStatus.CONFIG))]


def test_a_stop_outlasts_the_longest_cleanup_script() -> None:
    # A cleanup script killed by the stop timeout counts as interrupted and never runs again.
    d = directives()
    assert d["KillMode"] == ["mixed"]
    assert seconds(d["TimeoutStopSec"][0]) >= KEYS["cleanup_timeout"].default + 60


def test_the_state_lives_in_the_units_state_directory() -> None:
    d = directives()
    assert d["StateDirectory"] == ["synkler"] and d["LogsDirectory"] == ["synkler"]
    assert d["ProtectSystem"] == ["strict"]  # so only those and ReadWritePaths= can be written


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11 to read pyproject.toml")
def test_the_documentation_the_unit_names_is_installed_with_the_package() -> None:
    # With the venv in /opt/synkler, pip puts the data files under /opt/synkler/share/….
    (doc,) = directives()["Documentation"]
    prefix = "file://" + str(Path(INSTALLED_COMMAND).parent.parent) + "/"
    assert doc.startswith(prefix)
    target = Path(doc[len(prefix) :])
    with open(REPO / "pyproject.toml", "rb") as f:
        data_files = tomllib.load(f)["tool"]["setuptools"]["data-files"]
    sources = [p for pattern in data_files[str(target.parent)] for p in REPO.glob(pattern)]
    assert target.name in {p.name for p in sources}
