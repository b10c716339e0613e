"""Issue 26: an operator's commands at one destination (`retry --to`, `resend --to`) on the real relay
(RabbitMQ, sshd, rsync, the agents as subprocesses), with two downloads that each sign receipts.

What a user checks: the destination where the entry failed gets it, with its md5, when central is
told `retry --to` it; the other destination is not touched (one pull, one cleanup run); upload's
cleanup runs once, after both; `resend --to` sends to that destination only; an unknown destination
is a clear error that changes nothing.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

from support.faultkit import recorder, script_runs
from support.relay_helpers import TOOLS, assert_clean, place

from synkler import receipts
from synkler.hops.checksum import md5_entry

DOWNLOADS = ("download", "archive")


def _synkler(relay, role: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(relay.command(role, *args), capture_output=True, text=True, timeout=120)


def _states(relay, key: str) -> list[str]:
    return [e.state for e in relay.entries(key)]


def _two_downloads(make_relay, *, archive_fails: bool = False):
    """A relay whose central routes every entry to download and archive, each signing its receipts
    with a key of its own, pinned at upload and central (a map of destination -> key)."""
    work = make_relay.next_dir()
    work.mkdir(parents=True, exist_ok=True)
    pinned, settings = {}, {}
    for name in DOWNLOADS:
        key = receipts.new_key()
        (work / f"{name}.key").write_bytes(receipts.private_bytes(key))
        (work / f"{name}.key").chmod(0o600)
        pinned[name] = receipts.public_text(key)
        settings[name] = {
            "receipt_key": str(work / f"{name}.key"),
            "cleanup_script": recorder(work / f"cleanup-{name}.log"),
        }
    if archive_fails:  # its first rsync run fails, and one failure is all max_attempts allows
        failing = [sys.executable, str(TOOLS / "failing_rsync.py"), str(work / "failed-once")]
        settings["archive"].update(rsync=shlex.join(failing), max_attempts=1)
    settings["upload"] = {
        "settle_seconds": 0.3,
        "download_public_key": pinned,
        "cleanup_script": recorder(work / "cleanup-upload.log"),
    }
    settings["central"] = {
        "routes": [{"to": list(DOWNLOADS)}],
        "download_public_key": pinned,
        "keep_minutes": 0.02,
    }
    relay = make_relay(settings, extra={"archive": "download"}, verbose=False)
    relay.start("central", "upload", *DOWNLOADS)
    return relay, work


def test_a_destination_where_the_entry_failed_is_retried_with_to_and_the_other_is_not_touched(make_relay):
    relay, work = _two_downloads(make_relay, archive_fails=True)
    md5 = place(relay.dirs["upload"], "run-1.dat", b"run-1\n" * 50_000)
    relay.wait_for(
        "download has it and archive failed",
        lambda: _states(relay, "download") == ["done"] and _states(relay, "archive") == ["failed"],
        120,
    )
    relay.wait_for("upload hears of archive's failure", lambda: _states(relay, "upload") == ["failed"], 60)
    assert _states(relay, "central") == ["failed"] and script_runs(work / "cleanup-upload.log") == []

    # An unknown destination, and one that has the entry: clear errors, nothing changes.
    unknown = _synkler(relay, "central", "retry", "run-1.dat", "--to", "nowhere")
    assert unknown.returncode != 0, unknown
    assert "does not go to 'nowhere' (it goes to archive, download)" in unknown.stderr, unknown
    has_it = _synkler(relay, "central", "retry", "run-1.dat", "--to", "download")
    assert has_it.returncode != 0 and "it is fetched at download" in has_it.stderr, has_it
    other = _synkler(relay, "download", "retry", "run-1.dat", "--to", "archive")
    assert other.returncode != 0 and "'archive' is another download" in other.stderr, other

    retried = _synkler(relay, "central", "retry", "run-1.dat", "--to", "archive")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "archive asked to pull central's verified copy again; download not touched" in retried.stdout
    relay.wait_for(
        "archive has it and upload cleans up",
        lambda: _states(relay, "archive") == ["done"] and _states(relay, "upload") == ["done"],
        120,
    )
    for dest in DOWNLOADS:
        assert md5_entry(relay.dirs[dest] / "run-1.dat") == md5, dest
        assert script_runs(work / f"cleanup-{dest}.log") == [("run-1.dat", md5)], dest
    assert [e.state for e in relay.entries("download")] == ["done"]  # pulled once, not again
    assert script_runs(work / "cleanup-upload.log") == [("run-1.dat", md5)]
    relay.wait_for("central delivered it", lambda: _states(relay, "central")[0] in ("delivered", "expired"))

    # resend --to archive: a new entry that goes to archive only.
    sent = _synkler(relay, "upload", "resend", "run-1.dat", "--to", "archive")
    assert sent.returncode == 0 and "sent again to archive as entry" in sent.stdout, sent
    relay.wait_for("the resent entry is done", lambda: _states(relay, "upload") == ["done", "done"], 120)
    assert _states(relay, "archive") == ["done", "done"] and _states(relay, "download") == ["done"]
    relay.wait_for("central empties", lambda: _states(relay, "central") == ["expired", "expired"], 60)
    assert_clean(relay)


def test_upload_keeps_each_destinations_signed_receipt_and_verify_checks_each_with_its_key(make_relay):
    relay, _work = _two_downloads(make_relay)
    md5s = {name: place(relay.dirs["upload"], name, name.encode() * 20_000) for name in ("a.raw", "b.raw")}
    relay.wait_for("both delivered at both", lambda: _states(relay, "upload") == ["done", "done"], 120)
    top = relay.workdir / "upload"
    docs = sorted(top.glob("*-receipts/*/*/*.json"))
    ids = {e.name: e.id for e in relay.entries("upload")}
    assert sorted(p.name for p in docs) == sorted(
        f"{ids[name]}.{dest}.json" for name in md5s for dest in DOWNLOADS
    )  # one per destination: neither in place of the other
    for path in docs:
        kept = json.loads(path.read_text())
        dest = path.stem.split(".", 1)[1]
        assert kept["upload"]["destination"] == dest
        assert [h["agent"] for h in kept["receipt"]["hops"] if h["role"] == "download"] == [dest]
        assert kept["receipt"]["md5"] == md5s[kept["upload"]["name"]]
    run = _synkler(relay, "upload", "verify")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 entries checked (the receipts kept): 4 ok, 0 with differences" in run.stdout, run.stdout

    # archive's receipt of a.raw altered after signing: that one is reported, and only that one.
    altered = top.glob(f"*-receipts/*/*/{ids['a.raw']}.archive.json").__next__()
    kept = json.loads(altered.read_text())
    kept["receipt"]["stored_as"] = "elsewhere.raw"
    altered.write_text(json.dumps(kept))
    run = _synkler(relay, "upload", "verify")
    assert run.returncode == 1, run.stdout
    fails = [line for line in run.stdout.splitlines() if line.startswith("FAIL")]
    assert fails and all(f"(entry {ids['a.raw']}, to archive)" in line for line in fails), run.stdout
    assert "forged or altered" in run.stdout and "3 ok, 1 with differences" in run.stdout
    # download's receipt of b.raw kept in archive's place: the key of archive does not check it.
    [b_down] = top.glob(f"*-receipts/*/*/{ids['b.raw']}.download.json")
    b_archive = b_down.with_name(f"{ids['b.raw']}.archive.json")
    b_archive.write_bytes(b_down.read_bytes())
    run = _synkler(relay, "upload", "verify", ids["b.raw"])
    assert run.returncode == 1 and f"(entry {ids['b.raw']}, to archive)" in run.stdout, run.stdout
    assert "do not name one destination (archive, download)" in run.stdout, run.stdout
