"""bench/relay_bench.py must keep working: run it with tiny sizes and check its JSON report.

Only the shape of the report is checked, never the timing targets: those depend on the machine, and a
test that fails on a slow CI runner would say nothing about synkler.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Network namespaces and timed runs: one benchmark at a time.
pytestmark = pytest.mark.xdist_group("bench")

BENCH = Path(__file__).resolve().parents[2] / "bench" / "relay_bench.py"


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def test_the_benchmark_runs_and_reports_positive_figures(broker, sshd, tmp_path):
    out = tmp_path / "bench.json"
    argv = [
        sys.executable,
        str(BENCH),
        "--quick",
        "--only",
        "latency,many,tree,mixed",
        "--latency-runs",
        "2",
        "--many",
        "20",
        "--mixed",
        "3",
        "--mixed-mb",
        "8",  # each rsync run lives longer than the sampler's 50 ms period
        "--link-mib",
        "1000",  # every rsync run, direct and the agents', takes the limit (too high to slow them)
        "--broker",
        f"{broker.host}:{broker.port}",
        "--json",
        str(out),
    ]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert set(report) >= {"machine", "settings", "results", "table"}
    assert "error" not in report
    assert positive(report["machine"]["nproc"])
    assert report["machine"]["python"] and report["machine"]["rsync"]
    assert report["settings"]["many"] == 20 and positive(report["settings"]["settle_seconds"])
    assert report["settings"]["quiet_s"] == 0  # --quick: no rest before timed runs
    assert report["settings"]["link_mib"] == 1000
    assert "every rsync run limited to 1000 MiB/s" in run.stdout
    assert set(report["results"]) == {"latency", "many", "tree", "mixed"}

    latency = report["results"]["latency"]  # renamed in; "in_place": written where it stands
    assert latency["runs"] == 2
    for figures in (latency, latency["in_place"]):
        assert len(figures["times_s"]) == 2
        for key in ("median_s", "min_s", "max_s", "median_recorded_s"):
            assert positive(figures[key]), key
        assert figures["min_s"] <= figures["median_s"] <= figures["max_s"]
    in_place = latency["in_place"]
    assert in_place["median_minus_settle_s"] == in_place["median_s"] - latency["settle_seconds"]
    assert in_place["min_s"] >= latency["settle_seconds"]  # a file written in place settles first

    many = report["results"]["many"]
    assert many["files"] == 20 and many["file_bytes"] == 4 << 10
    for key in ("relay_s", "direct_s", "ratio", "relay_files_per_s"):
        assert positive(many[key]), key
    assert many["concurrency"] is None  # sampled only in mixed

    mixed = report["results"]["mixed"]
    assert mixed["files"] == 3 and mixed["total_bytes"] == 3 * (8 << 20)
    assert positive(mixed["ratio"])
    concurrency = mixed["concurrency"]
    assert positive(concurrency["samples"]) and positive(concurrency["peak_rsync"])
    assert positive(concurrency["peak_states"])

    tree = report["results"]["tree"]  # the same files as one directory entry
    assert tree["files"] == 20 and tree["total_bytes"] == 20 * (4 << 10) and len(tree["runs"]) == 1
    for key in ("relay_s", "direct_s", "ratio"):
        assert positive(tree[key]), key

    figures = [row["figure"] for row in report["table"]]
    assert any(f.startswith("latency, 1 KiB file renamed in") for f in figures)
    assert any(f.startswith("latency, 1 KiB file written in place") for f in figures)
    assert "| figure" in run.stdout and "BENCHMARK FAILED" not in run.stdout
    assert not Path(run.stdout.split("working in ", 1)[1].split()[0]).exists(), "work dir left behind"


def mounted_under(path: str) -> list[str]:
    return [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines() if path in line]


def run_bench(broker, tmp_path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """Run the benchmark; the result's `args` is its pid (which names its network namespaces)."""
    out = tmp_path / "bench.json"
    argv = [sys.executable, str(BENCH), "--quick", *extra, "--broker", f"{broker.host}:{broker.port}"]
    proc = subprocess.Popen(
        [*argv, "--json", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    stdout, stderr = proc.communicate(timeout=600)
    run = subprocess.CompletedProcess(proc.pid, proc.returncode, stdout, stderr)
    assert run.returncode == 0, run.stdout + run.stderr
    work = run.stdout.split("working in ", 1)[1].split()[0]
    assert not Path(work).exists(), "work dir left behind"
    assert not mounted_under(work), "a file system of a timed run is still mounted"
    return run, json.loads(out.read_text())


def test_scale_reports_wall_and_cpu_against_a_direct_rsync_of_the_same_set(broker, sshd, tmp_path):
    """A tiny `--only scale`: two counts of top-level files and one directory entry, each with its
    direct rsync; every run writes into a file system of its own (--fs) that is gone afterwards."""
    run, report = run_bench(broker, tmp_path, "--only", "scale", "--scale", "3,6", "--scale-tree", "5")
    assert "error" not in report
    assert report["settings"]["scale"] == [3, 6] and report["settings"]["fs"] in ("ext4", "tmpfs", "dir")
    cases = report["results"]["scale"]["cases"]
    assert [(c["case"], c["files"]) for c in cases] == [("files", 3), ("files", 6), ("tree", 5)]
    for case in cases:
        assert positive(case["relay_s"]) and positive(case["direct_s"]) and positive(case["ratio"])
        if report["settings"]["cpu_accounting"]:  # root with a cgroup hierarchy, as here and in CI
            assert positive(case["relay_cpu_s"]) and positive(case["direct_cpu_s"])
            direct = case["runs"][0]["direct_cpu"]
            assert positive(direct["local_s"]) and positive(direct["remote_s"])  # rsync+ssh, sshd side
            relay = case["runs"][0]["relay_cpu"]
            assert positive(relay["agents_s"]) and positive(relay["sshd_s"])
    figures = [row["figure"] for row in report["table"]]
    assert "scale, 6 × 4 KiB" in figures and "scale, 5 × 4 KiB in one directory entry" in figures
    if report["settings"]["cpu_accounting"]:
        assert "scale, 6 × 4 KiB, CPU time" in figures


def test_links_runs_the_relay_across_namespaces_and_removes_them(broker, sshd, tmp_path):
    """A tiny `--only links` (needs root and iproute2, else it reports itself skipped)."""
    sys.path.insert(0, str(BENCH.parent))
    try:
        import netns
    finally:
        sys.path.remove(str(BENCH.parent))
    extra = ["--links-big-mb", "2", "--links-files", "2", "--links-file-mb", "1", "--links-rate-mbit", "400"]
    run, report = run_bench(broker, tmp_path, "--only", "links", *extra)
    listing = ["ip", "netns", "list"]
    left = subprocess.run(listing, capture_output=True, text=True).stdout if shutil.which("ip") else ""
    assert f"{netns.PREFIX}{run.args}-" not in left, "a network namespace left behind"
    links = report["results"]["links"]
    why = netns.missing()
    if why:
        assert links["skipped"] == why and "links: SKIPPED" in run.stdout
        return
    assert [(c["case"], c["files"]) for c in links["cases"]] == [("links-big", 1), ("links-mixed", 2)]
    for case in links["cases"]:
        assert positive(case["relay_s"]) and positive(case["direct_s"])
    assert any(row["figure"].startswith("links at 400 Mbit/s") for row in report["table"])


def test_centrals_relays_through_pools_of_one_and_two_centrals_and_removes_the_namespaces(
    broker, sshd, tmp_path
):
    """A tiny `--only centrals`: the same files through a pool of one central and of two, each central
    a host of its own (needs root, iproute2 and the kernel's bridge, else it reports itself skipped)."""
    sys.path.insert(0, str(BENCH.parent))
    try:
        import netns
        import netns_star
    finally:
        sys.path.remove(str(BENCH.parent))
    extra = ["--centrals", "1,2", "--centrals-files", "4", "--centrals-file-mb", "1"]
    run, report = run_bench(broker, tmp_path, "--only", "centrals", *extra, "--centrals-rate-mbit", "400")
    listing = ["ip", "netns", "list"]
    left = subprocess.run(listing, capture_output=True, text=True).stdout if shutil.which("ip") else ""
    assert f"{netns.PREFIX}{run.args}-" not in left, "a network namespace left behind"
    centrals = report["results"]["centrals"]
    why = netns.missing() or netns_star.missing_bridge()
    if why:
        assert centrals["skipped"] == why and "centrals: SKIPPED" in run.stdout
        return
    assert report["settings"]["centrals"] == [1, 2] and centrals["rate_mbit"] == 400
    assert centrals["files"] == 4 and centrals["total_bytes"] == 4 << 20
    # Every central of each pool took entries (and every entry was delivered, md5 checked, or the
    # benchmark would have failed).
    assert [(r["centrals"], len(r["taken"])) for r in centrals["runs"]] == [(1, 1), (2, 2)]
    for r in centrals["runs"]:
        assert sum(r["taken"]) == 4 and min(r["taken"]) > 0, r["taken"]
        assert positive(r["relay_s"])
        # each central's link, counted on the switch, carried at least its entries in and out
        links = [r["links"][f"central-{i}"] for i in range(1, r["centrals"] + 1)]
        for link, taken in zip(links, r["taken"]):
            assert min(link["in_mb"], link["out_mb"]) >= taken * (1 << 20) / 1e6, (link, taken)
            assert 0 < link["in_share"] <= 1.2 and 0 <= link["idle_s"] < r["relay_s"] + 1, link
    one, two = centrals["cases"]
    assert (one["centrals"], two["centrals"]) == (1, 2) and one["ratio"] == 1
    for case in (one, two):
        assert positive(case["mb_per_s"]) and positive(case["link_share"]) and positive(case["ratio"])
        if report["settings"]["cpu_accounting"]:
            assert positive(case["relay_cpu_s"])
    figures = [row["figure"] for row in report["table"]]
    assert "centrals at 400 Mbit/s each, 2 of them, 4 × 1 MiB" in figures
