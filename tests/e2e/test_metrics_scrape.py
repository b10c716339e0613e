"""Metrics of three real agents relaying through the real broker, sshd and rsync: scraped over loopback
HTTP, and read from a node_exporter textfile."""

from __future__ import annotations

import os
import socket

from support.metrics_helpers import expected, hop_counters, samples, scrape
from support.rabbitnode import free_port
from support.relay_helpers import deliver, place, started


def test_counters_and_histograms_count_every_entry_and_byte_relayed_and_the_textfile_parses(
    make_relay, tmp_path
):
    ports = {role: free_port() for role in ("upload", "central", "download")}
    textfile = tmp_path / "textfile" / "synkler-download.prom"
    textfile.parent.mkdir()
    relay = make_relay(
        upload={"metrics_listen": f"127.0.0.1:{ports['upload']}"},
        central={"metrics_listen": f"127.0.0.1:{ports['central']}"},
        download={"metrics_listen": f"127.0.0.1:{ports['download']}", "metrics_textfile": str(textfile)},
    )
    relay.start()
    sizes = {f"f{i}.bin": 1000 * (i + 1) for i in range(3)}
    md5s = {name: place(relay.dirs["upload"], name, os.urandom(size)) for name, size in sizes.items()}
    deliver(relay, md5s)
    total = sum(sizes.values())

    up, mid = samples(scrape(ports["upload"])), samples(scrape(ports["central"]))
    assert up[("synkler_hop_entries_total", "push")] == 3
    assert up[("synkler_hop_entries_total", "relay")] == 3
    assert up[("synkler_hop_bytes_total", "relay")] == total
    assert up[("synkler_hop_duration_seconds_count", "relay")] == 3
    for hop in ("push", "pull"):
        assert mid[("synkler_hop_entries_total", hop)] == 3
        assert mid[("synkler_hop_bytes_total", hop)] == total
        assert mid[("synkler_hop_duration_seconds_count", hop)] == 3
        assert mid[("synkler_md5_mismatches_total", hop)] == 0
    assert mid[("synkler_peer_last_heard_timestamp_seconds", "download")] > 0
    assert mid[("synkler_file_dir_reserve_bytes", "")] > 0

    def download_shows_them_done() -> bool:
        got = samples(scrape(ports["download"]))
        return got.get(("synkler_entries", "done")) == 3 and got.get(("synkler_outbox_messages", "")) == 0

    relay.wait_for("download's gauges", download_shows_them_done, timeout=15)
    down = samples(scrape(ports["download"]))
    assert down[("synkler_hop_entries_total", "pull")] == 3
    assert down[("synkler_hop_bytes_total", "pull")] == total
    assert down[("synkler_hop_duration_seconds_count", "pull")] == 3
    assert down[("synkler_transfers_running", "")] == 0

    relay.wait_for("the textfile", lambda: textfile.exists() and "synkler_entries" in textfile.read_text())
    relay.stop("download")  # its last textfile is written at the stop
    parsed = samples(textfile.read_text())
    assert parsed[("synkler_hop_entries_total", "pull")] == 3
    assert parsed[("synkler_entries", "done")] == 3
    assert [p.name for p in textfile.parent.iterdir()] == [textfile.name]  # no temporary file left


def test_an_address_in_use_is_an_error_in_the_log_and_the_agent_relays_on(make_relay):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        relay = make_relay(central={"metrics_listen": f"127.0.0.1:{port}"})
        relay.start()
        md5 = place(relay.dirs["upload"], "x", b"x")
        deliver(relay, {"x": md5})
        log = relay.log_path("central").read_text()
        assert f"ERROR cannot serve metrics on 127.0.0.1:{port}" in log


def test_each_hop_counter_equals_the_deliveries_and_their_bytes_at_every_role_across_a_restart(
    make_relay, tmp_path
):
    # Cleanup scripts at both ends, as in production: download's entries then go placing ->
    # delivered -> done, and upload's delivered -> done.
    script = tmp_path / "cleanup.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    ports = {role: free_port() for role in ("upload", "central", "download")}
    settings = {role: {"metrics_listen": f"127.0.0.1:{port}"} for role, port in ports.items()}
    for role in ("upload", "download"):
        settings[role]["cleanup_script"] = f"{script} %F"
    relay = make_relay(settings)
    relay.start()

    def relay_batch(prefix: str, n: int) -> int:
        sizes = {f"{prefix}{i}.bin": 1000 * (i + 1) for i in range(n)}
        md5s = {name: place(relay.dirs["upload"], name, os.urandom(size)) for name, size in sizes.items()}
        deliver(relay, md5s)
        return sum(sizes.values())

    total = relay_batch("a", 5)
    for role, port in ports.items():
        assert hop_counters(port) == expected(role, 5, total), role

    relay.stop()
    started(relay)

    def serving() -> bool:
        try:
            return all(hop_counters(port) is not None for port in ports.values())
        except OSError:
            return False

    relay.wait_for("metrics served again", serving, timeout=30)
    for role, port in ports.items():  # a new process counts from 0: nothing replayed at its start
        assert hop_counters(port) == expected(role, 0, 0), role
    total = relay_batch("b", 4)
    for role, port in ports.items():
        assert hop_counters(port) == expected(role, 4, total), role
