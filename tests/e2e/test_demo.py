"""`synkler demo` is the first thing a user runs: it must relay everything and leave nothing behind."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_the_demo_relays_every_entry_and_cleans_up_after_itself(broker, sshd, rabbitmqctl):
    demo = [sys.executable, "-m", "synkler", "demo"]
    run = subprocess.run(demo, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "md5 verified at download for every entry: True" in out
    assert "cleanup scripts ran once per entry on both sides: True" in out
    assert re.search(r"run-0042 +dir .* ok +expired +1/1", out)
    instance = re.search(r"instance (demo-[0-9a-f]+), working in (\S+)", out)
    assert not Path(instance.group(2)).exists(), "the demo's directory was left behind"
    for what in ("list_queues", "list_exchanges"):
        names = subprocess.run([rabbitmqctl, "-q", what, "name"], capture_output=True, text=True, check=True)
        assert f"synkler:{instance.group(1)}" not in names.stdout, f"the demo left broker objects ({what})"
    pids = subprocess.run(["pgrep", "-f", instance.group(2)], capture_output=True, text=True).stdout.split()
    assert pids == [], "the demo left processes running"
