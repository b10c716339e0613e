"""The metrics' pure parts: which state changes end which hops, and what the registry then shows."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from synkler.config import parse_config
from synkler.observe.metrics import HopClock, Metrics
from synkler.observe.report import Disk, Figures
from synkler.state import Entry


def entry(state: str, created: float = 100.0, size: int = 10) -> Entry:
    return Entry(
        id="e1",
        state=state,
        peer="central",
        name="a",
        kind="file",
        size=size,
        files=1,
        md5="m",
        created=created,
    )


def test_a_download_hop_runs_from_the_fetch_to_the_verified_copy_and_ends_once():
    clock = HopClock("download")
    assert clock.change(None, entry("fetching"), 10.0) == []
    assert clock.change("fetching", entry("placing"), 13.5) == [("pull", 3.5)]
    assert clock.change("placing", entry("done"), 14.0) == []  # already ended


def test_a_delivery_at_download_ends_its_pull_once_whatever_follows_the_placing():
    clock = HopClock("download")
    clock.change(None, entry("fetching"), 10.0)
    assert clock.change("fetching", entry("placing"), 12.0) == [("pull", 2.0)]
    assert clock.change("placing", entry("delivered"), 13.0) == []  # renamed into place
    assert clock.change("delivered", entry("done"), 14.0) == []  # its cleanup script ran
    assert clock.change("done", entry("delivered"), 15.0) == []  # `retry` of a failed cleanup
    assert clock.change("delivered", entry("done"), 16.0) == []
    restarted = HopClock("download")  # a restart between the placing and the cleanup
    assert restarted.change("delivered", entry("done"), 20.0) == []


def test_central_ends_the_push_and_starts_the_pull_in_one_change():
    clock = HopClock("central")
    clock.change(None, entry("waiting"), 0.0)
    clock.change("waiting", entry("uploading"), 1.0)
    assert clock.change("uploading", entry("verifying"), 2.0) == []
    assert clock.change("verifying", entry("downloading"), 4.0) == [("push", 3.0)]
    assert clock.change("downloading", entry("delivered"), 9.0) == [("pull", 5.0)]


def test_a_hop_whose_start_was_not_seen_counts_without_a_duration_and_relay_is_timed_from_creation():
    clock = HopClock("upload")  # as after a restart in the middle of a push
    assert clock.change("uploading", entry("sent"), 50.0) == [("push", None)]
    assert clock.change("sent", entry("delivered", created=20.0), 50.0) == [("relay", 30.0)]
    assert clock.change("delivered", entry("done", created=20.0), 51.0) == []


def test_a_hop_left_another_way_forgets_its_start():
    clock = HopClock("download")
    clock.change(None, entry("fetching"), 1.0)
    clock.change("fetching", entry("failed"), 2.0)
    assert clock._began == {}


def test_the_registry_shows_counters_histograms_and_gauges_with_the_agent_labels(tmp_path: Path):
    data = {
        "mode": "download",
        "id": "lab",
        "file_dir": str(tmp_path),
        "synkler_server": "b",
        "metrics_textfile": str(tmp_path / "m.prom"),
    }
    cfg = parse_config(data, tmp_path / "c.conf", check_dirs=False, environ={}, home=tmp_path)
    m = Metrics(cfg, "download", ["fetching", "placing", "done"])
    m.moved(None, entry("fetching", size=7))
    m.moved("fetching", entry("placing", size=7))
    m.mismatch("pull from central")
    m.retried("pull from central", "link_down")
    m.heard_from("central", 1234.0)
    m.tick(
        0.0,
        lambda: Figures({"done": 2}, outbox=3, transfers=1, disk=Disk(free=5, total=9, reserve=0)),
    )
    text = (tmp_path / "m.prom").read_text()
    samples = {
        (
            s.name,
            tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("role", "agent", "instance"))),
        ): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("synkler_hop_entries_total", (("hop", "pull"),))] == 1
    assert samples[("synkler_hop_bytes_total", (("hop", "pull"),))] == 7
    assert samples[("synkler_hop_duration_seconds_count", (("hop", "pull"),))] == 1
    assert samples[("synkler_md5_mismatches_total", (("hop", "pull"),))] == 1
    assert samples[("synkler_retries_total", (("cause", "link_down"), ("hop", "pull")))] == 1
    assert samples[("synkler_peer_last_heard_timestamp_seconds", (("peer", "central"),))] == 1234.0
    assert samples[("synkler_entries", (("state", "done"),))] == 2
    assert samples[("synkler_entries", (("state", "fetching"),))] == 0
    assert samples[("synkler_outbox_messages", ())] == 3
    assert samples[("synkler_transfers_running", ())] == 1
    assert samples[("synkler_file_dir_free_bytes", ())] == 5
    labels = next(iter(text_string_to_metric_families(text))).samples[0].labels
    assert {k: labels[k] for k in ("role", "agent", "instance")} == {
        "role": "download",
        "agent": "download",
        "instance": "lab",
    }
    m.close()


def test_the_example_alert_rules_of_the_docs_pass_promtool_and_name_only_metrics_the_agents_export(
    tmp_path: Path,
):
    import re
    import shutil
    import subprocess

    import pytest

    docs = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    rules = re.search(r"Example alert rules.*?```yaml\n(.*?)```", docs, re.S)
    assert rules is not None
    data = {"mode": "central", "id": "lab", "file_dir": str(tmp_path), "synkler_server": "b"}
    data["metrics_textfile"] = str(tmp_path / "m.prom")
    cfg = parse_config(data, tmp_path / "c.conf", check_dirs=False, environ={}, home=tmp_path)
    m = Metrics(cfg, "central", ["stored", "failed"])
    m.moved(None, entry("stored"))
    m.tick(0.0, lambda: Figures({"failed": 0}, outbox=0, transfers=0, disk=Disk(free=5, total=9, reserve=1)))
    m.close()
    exported = {
        s.name for f in text_string_to_metric_families((tmp_path / "m.prom").read_text()) for s in f.samples
    }
    named = set(re.findall(r"\bsynkler_[a-z_]+", rules.group(1)))
    assert named and named <= exported, named - exported
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus): the rules' syntax is unchecked")
    (tmp_path / "rules.yml").write_text(rules.group(1))
    done = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
