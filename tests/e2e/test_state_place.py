"""`synkler status` and the repairs find the database of the agent the systemd unit runs, from a
shell without the unit's environment: real broker, sshd, rsync and agents."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml
from support.relay_helpers import place

from synkler.cli.main import main
from synkler.config import keys


def unit_style_upload(relay, state_dir: Path) -> None:
    """Start upload as synkler@upload.service does: default state places, $STATE_DIRECTORY set."""
    cfg = yaml.safe_load(relay.configs["upload"].read_text())
    del cfg["state_db"], cfg["pidfile"]
    relay.configs["upload"].write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "XDG_STATE_HOME"}
    env["STATE_DIRECTORY"] = str(state_dir)
    with open(relay.log_path("upload"), "ab") as log:
        relay.procs["upload"] = subprocess.Popen(
            relay.command("upload", "-v", "run"), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
        )


def test_status_and_resend_from_a_shell_find_the_database_of_the_agent_the_unit_runs(
    make_relay, tmp_path, monkeypatch, capsys
):
    state_dir = tmp_path / "var-lib-synkler"
    state_dir.mkdir()
    monkeypatch.setattr(keys, "UNIT_STATE_DIR", state_dir)  # the unit's StateDirectory=synkler
    relay = make_relay()
    relay.start("central", "download")
    unit_style_upload(relay, state_dir)
    place(relay.dirs["upload"], "report.csv", b"a,b\n1,2\n")
    relay.wait_for("the delivery", lambda: relay.states("download").get("report.csv") == "done")

    # An operator's root shell: no $STATE_DIRECTORY, another home.
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "root-home"))
    conf = str(relay.configs["upload"])

    def upload_says_done() -> bool:
        assert main(["-c", conf, "status", "--json"]) == 0
        [row] = json.loads(capsys.readouterr().out)
        assert row["name"] == "report.csv"
        return bool(row["state"] == "done")  # upload hears of the delivery a moment after download

    relay.wait_for("upload's status to show the delivery", upload_says_done, timeout=30)

    assert main(["-c", conf, "resend", "report.csv", "--wait", "30"]) == 0
    answer = capsys.readouterr().out
    assert "report.csv" in answer
    assert not (tmp_path / "root-home" / ".local").exists()  # nothing made in the shell's own places
