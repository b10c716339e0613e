"""Issue 22, item 1: download's broker login alone cannot make upload delete data that exists nowhere
else. Against the authenticated relay of tests/support/authrelay.py (a private RabbitMQ node, one
least-privileged user per agent, download's receipts signed with its own key and pinned at upload
and central), an attacker holding download's broker password publishes `fetched` as download, with
no receipt, with one signed by another key, and with a genuine receipt of another entry: for an
entry that failed at central's admission (stored nowhere but at upload), and for one central asked
download to fetch while download is down. What a user checks: upload's data is still there and its
cleanup script never ran for it, central's copy is intact, and the relay still delivers afterwards
and after a restart of every agent. And on the normal relay: every delivery has a stored receipt
that verifies, and each cleanup script ran exactly once.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pika
import pytest
from support.authrelay import Attacker, connect
from support.relay_helpers import deliver, place

from synkler import messages, receipts
from synkler.broker.names import broker_user, exchange_name
from synkler.devkit.localrelay import LocalRelay
from synkler.hops.checksum import md5_entry
from synkler.state import State

# A RabbitMQ node of its own (private_rabbit): one such module of its group at a time
# (two groups, balanced by their run time: one would hold a worker for most of the run).
pytestmark = pytest.mark.xdist_group("rabbit-nodes-1")


@pytest.fixture
def relay(authenticated_relay) -> LocalRelay:
    return authenticated_relay


@pytest.fixture
def counter(relay, private_rabbit):
    """Counts the instance's dead letters (mallory may read the dead-letter queue)."""
    with Attacker(private_rabbit, relay) as a:
        yield a


class AsDownload:
    """Whoever holds download's broker password: publishes as download, authenticated."""

    def __init__(self, node: Any, relay: LocalRelay):
        self.relay = relay
        self.user = broker_user(relay.instance, "download")
        self.conn = connect(node, self.user, settings(relay, "download")["broker_password"])
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    def fetched(self, entry_id: str, name: str, receipt: str) -> None:
        msg = messages.Fetched(entry_id, "download", stored_as=name, outcome="placed", receipt=receipt)
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json", user_id=self.user)
        self.ch.basic_publish(exchange_name(self.relay.instance), "central", messages.encode(msg), props)

    def failed(self, entry_id: str) -> None:
        msg = messages.Failed(entry_id, "download", hop="pull from central", reason="forged")
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json", user_id=self.user)
        self.ch.basic_publish(exchange_name(self.relay.instance), "central", messages.encode(msg), props)

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()


@pytest.fixture
def as_download(relay, private_rabbit):
    a = AsDownload(private_rabbit, relay)
    yield a
    a.close()


def settings(relay: LocalRelay, role: str) -> dict:
    import yaml

    return yaml.safe_load(relay.configs[role].read_text())


def receipts_of(relay: LocalRelay, role: str) -> dict[str, dict[str, str]]:
    """Entry name -> the receipts `role` keeps of it (destination -> signed receipt)."""
    state = State(relay.workdir / role / "state.sqlite", readonly=True)
    try:
        return {e.name: state.receipts(e.id) for e in state.all()}
    finally:
        state.close()


def cleanup_runs(log: object) -> list[str]:
    path = Path(str(log))
    return path.read_text().splitlines() if path.exists() else []


def entry_named(relay: LocalRelay, role: str, name: str):
    [entry] = [e for e in relay.entries(role) if e.name == name]
    return entry


def first_delivery(relay: LocalRelay) -> str:
    """Deliver one entry, for real; its genuine receipt (to be replayed for another entry)."""
    relay.start()
    md5 = place(relay.dirs["upload"], "first.dat", os.urandom(2048))
    deliver(relay, {"first.dat": md5})
    return receipts_of(relay, "central")["first.dat"]["download"]


def forged_fetched(
    relay: LocalRelay, as_download: AsDownload, counter: Attacker, entry: Any, genuine: str
) -> None:
    """The three forgeries of a `fetched` for `entry`: each dead-lettered."""
    before = counter.dead()
    claim = receipts.Receipt(
        instance=relay.instance,
        entry=entry.id,
        name=entry.name,
        kind=entry.kind,
        size=entry.size,
        files=entry.files,
        md5=entry.md5 or "0" * 32,
        destination="download",
        placed_at=0.0,
        stored_as=entry.name,
        outcome="placed",
    )
    as_download.fetched(entry.id, entry.name, "")  # none
    as_download.fetched(entry.id, entry.name, receipts.sign(claim, receipts.new_key()))  # another key's
    as_download.fetched(entry.id, "first.dat", genuine)  # download's own, of another entry
    counter.wait_dead(before + 3)


def delivered(relay: LocalRelay, md5s: dict[str, str]) -> None:
    """These entries are done at upload and download, byte-exact (others may have failed)."""

    def done() -> bool:
        up, down = relay.states("upload"), relay.states("download")
        return all(up.get(name) == "done" == down.get(name) for name in md5s)

    relay.wait_for(f"{sorted(md5s)} delivered", done)
    for name, md5 in md5s.items():
        assert md5_entry(relay.dirs["download"] / name) == md5, name


def restart_all_and_deliver(relay: LocalRelay, *also: tuple[str, str]) -> None:
    relay.stop()
    relay.start()
    md5 = place(relay.dirs["upload"], "after.dat", os.urandom(4096))
    delivered(relay, {"after.dat": md5, **dict(also)})


def test_downloads_login_cannot_make_upload_delete_an_entry_that_failed_at_admission(
    relay, as_download, counter
):
    genuine = first_delivery(relay)
    central = settings(relay, "central")
    relay.stop("central")
    relay.write_config("central", {**central, "free_percent": 100})  # no entry can ever fit
    relay.start("central")
    place(relay.dirs["upload"], "precious.raw", b"the only copy")
    relay.wait_for("the failure at admission", lambda: relay.states("upload").get("precious.raw") == "failed")
    entry = entry_named(relay, "central", "precious.raw")
    assert entry.state == "failed"

    forged_fetched(relay, as_download, counter, entry, genuine)

    refused = "never asked download to fetch it"
    relay.wait_for("central's log of the refusals", lambda: refused in relay.log_path("central").read_text())
    assert relay.states("central")["precious.raw"] == "failed"
    assert relay.states("upload")["precious.raw"] == "failed"
    assert (relay.dirs["upload"] / "precious.raw").read_bytes() == b"the only copy"
    assert cleanup_runs(relay.up_log) == ["first.dat"]
    relay.write_config("central", central)
    restart_all_and_deliver(relay)
    assert (relay.dirs["upload"] / "precious.raw").read_bytes() == b"the only copy"
    assert sorted(cleanup_runs(relay.up_log)) == ["after.dat", "first.dat"]


def test_downloads_login_cannot_make_upload_delete_an_entry_download_never_pulled(
    relay, as_download, counter
):
    genuine = first_delivery(relay)
    relay.stop("download")
    md5 = place(relay.dirs["upload"], "only-at-central.raw", os.urandom(8192))
    relay.wait_for(
        "the entry stored at central",
        lambda: relay.states("central").get("only-at-central.raw") == "downloading",
    )
    entry = entry_named(relay, "central", "only-at-central.raw")
    stored = relay.dirs["central"] / relay.instance / "stored" / entry.id

    forged_fetched(relay, as_download, counter, entry, genuine)

    assert relay.states("central")["only-at-central.raw"] == "downloading"
    assert relay.states("upload")["only-at-central.raw"] == "sent"
    assert md5_entry(stored) == md5
    assert md5_entry(relay.dirs["upload"] / "only-at-central.raw") == md5
    assert cleanup_runs(relay.up_log) == ["first.dat"]
    assert receipts_of(relay, "central")["only-at-central.raw"] == {}  # none kept
    # Download comes back: the entry is delivered for real, its cleanup runs once, and after a
    # restart of every agent the relay still delivers.
    relay.start("download")
    deliver(relay, {"only-at-central.raw": md5})
    restart_all_and_deliver(relay, ("only-at-central.raw", md5))
    assert sorted(cleanup_runs(relay.up_log)) == ["after.dat", "first.dat", "only-at-central.raw"]


def test_downloads_login_cannot_fail_an_entry_central_has_not_asked_it_to_fetch(relay, as_download, counter):
    """A `failed` from download counts only for an entry central asked download to fetch: one
    published with download's login for an entry central has only just been offered is
    dead-lettered, and the entry is delivered once."""
    first_delivery(relay)
    relay.stop("central")
    md5 = place(relay.dirs["upload"], "told-nothing.raw", os.urandom(4096))
    relay.wait_for("the offer", lambda: relay.states("upload").get("told-nothing.raw") == "offered")
    entry = entry_named(relay, "upload", "told-nothing.raw")
    before = counter.dead()
    as_download.failed(entry.id)  # queued behind the offer, in central's queue
    relay.start("central")
    counter.wait_dead(before + 1)
    delivered(relay, {"told-nothing.raw": md5})
    restart_all_and_deliver(relay, ("told-nothing.raw", md5))
    assert sorted(cleanup_runs(relay.up_log)) == ["after.dat", "first.dat", "told-nothing.raw"]


def test_every_delivery_has_a_receipt_that_verifies_at_every_role_and_cleanup_runs_once(relay):
    relay.start()
    names = ["a.dat", "naïve #1 ✓.dat"]  # not UTF-8 ones: tests/unit/test_receipts.py
    md5s = {name: place(relay.dirs["upload"], name, os.urandom(1000 + i)) for i, name in enumerate(names)}
    tree = relay.dirs["upload"].parent / ".tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "x").write_bytes(b"x")
    os.rename(tree, relay.dirs["upload"] / "tree")
    md5s["tree"] = md5_entry(relay.dirs["upload"] / "tree")
    deliver(relay, md5s)
    public = relay.receipt_key.public_key()
    kept = {role: receipts_of(relay, role) for role in ("upload", "central", "download")}
    for name, md5 in md5s.items():
        tokens = {kept[role][name]["download"] for role in kept}
        assert len(tokens) == 1  # the one download signed, kept as it came at every role
        receipt = receipts.verify(tokens.pop(), public)
        said = (receipt.instance, receipt.name, receipt.md5, receipt.stored_as)
        assert said == (relay.instance, name, md5, name)
        assert receipt.entry == entry_named(relay, "upload", name).id
    assert sorted(cleanup_runs(relay.up_log)) == sorted(md5s)
    assert sorted(cleanup_runs(relay.down_log)) == sorted(md5s)


def test_a_receipt_key_made_after_a_delivery_is_put_to_use_by_resend_on_download_and_upload_cleans_up_once(
    relay, counter
):
    """The set-up-order trap: download delivers before it has its receipt_key (upload and central
    already pin its public key), so central refuses its `fetched` as not proven and upload keeps its
    data; once the key is there, `synkler resend` on download sends the signed receipt, and upload's
    cleanup script runs, once."""
    import yaml

    conf = relay.configs["download"]
    keyed = conf.read_text()
    unkeyed = yaml.safe_load(keyed)
    del unkeyed["receipt_key"]
    conf.write_text(yaml.safe_dump(unkeyed))
    before = counter.dead()
    relay.start()
    md5 = place(relay.dirs["upload"], "late.dat", os.urandom(3000))
    relay.wait_for("placed at download", lambda: relay.states("download").get("late.dat") == "done")
    counter.wait_dead(before + 1)  # central's refusal of the `fetched` without a receipt
    assert md5_entry(relay.dirs["download"] / "late.dat") == md5
    assert relay.states("central")["late.dat"] == "downloading"
    assert (relay.dirs["upload"] / "late.dat").exists() and cleanup_runs(relay.up_log) == []

    relay.stop("download")
    conf.write_text(keyed)
    relay.start("download")
    done = subprocess.run(
        relay.command("download", "resend", "late.dat"), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # (the agent takes the request when it runs: now, or as it starts)
    assert "sent to central again" in done.stdout or "when it starts" in done.stdout
    relay.wait_for("cleaned up at upload", lambda: relay.states("upload").get("late.dat") == "done")
    assert relay.states("central")["late.dat"] == "delivered"
    assert cleanup_runs(relay.up_log) == ["late.dat"] and cleanup_runs(relay.down_log) == ["late.dat"]
    public = relay.receipt_key.public_key()
    for role in ("upload", "central"):
        receipt = receipts.verify(receipts_of(relay, role)["late.dat"]["download"], public)
        assert (receipt.name, receipt.md5, receipt.stored_as) == ("late.dat", md5, "late.dat")
    checked = subprocess.run(relay.command("upload", "verify"), capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    counter.wait_dead(before + 1)  # nothing more was refused
