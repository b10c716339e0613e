"""bench/relay_bench.py must keep working: run it with tiny sizes and check its JSON report.

Only the shape of the report is checked, never the timing targets: those depend on the machine, and a
test that fails on a slow CI runner would say nothing about synkler.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
