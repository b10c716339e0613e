"""Paths in messages are confined: no message makes an agent read or write on central outside the
instance's own directories there (issue 15). The fake runtime plays the broker; a refused message
raises MessageError, which the real runtime dead-letters."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fakes import Role

from synkler.errors import MessageError
from synkler.messages import Admit, Fetch, Offer, Pushing, confined, new_entry_id

MD5 = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "path, ok",
    [
        ("/srv/central/lab/staging/upload", True),
        ("/srv/central/lab/staging/upload/", True),
        ("/lab/staging/upload", False),  # central's file_dir is never /
        ("/staging/upload", False),  # too short to hold <id>/staging/<agent> under a directory
        ("/root/.ssh", False),
        ("/srv/central/other/staging/upload", False),
        ("/srv/central/lab/staging/someone-else", False),
        ("/srv/central/lab/stored/upload", False),
        ("/srv//central/lab/staging/upload", False),
        ("/srv/./central/lab/staging/upload", False),
        ("/srv/../root/lab/staging/upload", False),
        ("srv/central/lab/staging/upload", False),
        ("/srv/central/lab/staging/upload\n", False),
    ],
)
def test_only_a_path_shaped_like_the_instances_staging_is_confined(path, ok):
    assert confined(path, "lab", "staging", "upload") is ok


def offered(tmp_path: Path) -> tuple[Role, str]:
    r = Role("upload", tmp_path)
    e = r.given("offered", peer="central", attempt=1)
    return r, e.id


@pytest.mark.parametrize(
    "dest", ["/root/.ssh", "/home/central/.ssh/lab/staging/x", "/srv/central/lab/stored/upload"]
)
def test_an_admit_whose_dest_is_not_the_instances_staging_is_refused_and_changes_nothing(tmp_path, dest):
    r, entry_id = offered(tmp_path)
    with pytest.raises(MessageError, match="dest"):
        r.deliver(Admit(entry_id, "central", attempt=2, dest=dest))
    e = r.entry(entry_id)
    assert (e.state, e.attempt, e.path) == ("offered", 1, None)
    r.tick()
    assert not [j for j in r.jobs.pending if j.pool == "transfer"]


def test_a_fetch_of_a_path_outside_the_instances_store_is_refused_and_nothing_is_pulled(tmp_path):
    r = Role("download", tmp_path)
    entry_id = new_entry_id()
    for path in ("/etc/shadow", f"/etc/{entry_id}", f"/srv/central/other/stored/{entry_id}"):
        fetch = Fetch(
            entry_id, "central", name="x", kind="file", size=1, files=1, md5=MD5, attempt=1, path=path
        )
        with pytest.raises(MessageError, match="fetch: path"):
            r.deliver(fetch)
    assert r.state.get(entry_id) is None
    r.tick()
    assert r.jobs.pending == []


def test_a_pushing_for_a_path_outside_the_instances_growing_dir_pulls_nothing(tmp_path):
    r = Role("download", tmp_path)
    entry_id = new_entry_id()
    with pytest.raises(MessageError, match="pushing: path"):
        r.deliver(Pushing(entry_id, "central", size=1 << 30, path="/home/central/.ssh/id_ed25519"))
    assert r.jobs.pending == []
    assert r.agent.early == {}


def fake_rsync(tmp_path: Path, version_line: str) -> tuple[str, ...]:
    script = tmp_path / f"rsync-{abs(hash(version_line))}"
    script.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    script.chmod(0o755)
    return (str(script),)


@pytest.mark.parametrize(
    "line",
    [
        "rsync  version 3.5.0  protocol version 32",
        "rsync  version v3.2.4  protocol version 31",
        "rsync  version 3.2.3  protocol version 31",
        "rsync  version 3.0.0  protocol version 30",
    ],
)
def test_every_rsync_is_told_to_protect_remote_paths_whatever_its_version(tmp_path, line):
    """rsync 3.2.4's own quoting is undone by RSYNC_OLD_ARGS or --old-args (issue 22): never relied on."""
    from synkler.hops import transfer

    assert transfer.rsync_protection(fake_rsync(tmp_path, line)) == ("--protect-args",)


def test_an_rsync_confined_by_rrsync_is_not_told_to_protect_args_which_rrsync_refuses(tmp_path):
    from synkler.hops import transfer

    rsync = fake_rsync(tmp_path, "rsync  version 3.5.0  protocol version 32")
    assert transfer.rsync_protection(rsync, True) == ()


@pytest.mark.parametrize("line", ["rsync  version 2.6.9  protocol version 29", "something else entirely"])
def test_an_rsync_too_old_to_protect_remote_paths_is_refused_with_its_version(tmp_path, line):
    from synkler.hops import transfer

    with pytest.raises(transfer.RsyncTooOld, match="2.6.9|does not say"):
        transfer.rsync_protection(fake_rsync(tmp_path, line))


def test_the_protection_comes_before_every_other_option_of_a_hop(tmp_path):
    from types import SimpleNamespace

    from synkler.hops import transfer

    cfg = SimpleNamespace(
        rsync=fake_rsync(tmp_path, "rsync  version 3.1.3  protocol version 31"),
        rsync_opts=(),
        rsync_timeout=30,
        ssh_control_persist=0,
        central_host="central",
        rrsync_root=None,
        transport="rsync",
    )
    argv = transfer.rsync_argv(cfg, "/a/", "central:/srv/x y/lab/staging/upload/", listed=True)
    assert argv[1] == "--protect-args"


# Only the agent with a say over an entry is believed ------------------------------------------------


def test_upload_believes_only_central_about_its_entries(tmp_path):
    from synkler.messages import Delivered, Failed, Wait

    r, entry_id = offered(tmp_path)
    for forged in (
        Delivered(entry_id, "download", stored_as="x"),
        Delivered(entry_id, "mallory", stored_as="x"),
        Failed(entry_id, "other-upload", hop="push to central", reason="forged"),
        Wait(entry_id, "download", reason="forged"),
    ):
        with pytest.raises(MessageError, match="has no say"):
            r.deliver(forged)
    assert r.entry(entry_id).state == "offered"


def test_central_believes_sent_and_withdraw_only_from_the_upload_that_offered_and_fetched_only_from_download(
    tmp_path,
):
    from synkler.messages import Corrupt, Fetched, Sent, Withdraw

    r = Role("central", tmp_path)
    e = r.given("uploading", peer="lab-a", attempt=1)
    for forged in (
        Sent(e.id, "lab-b", attempt=1, md5=MD5),
        Withdraw(e.id, "lab-b", reason="forged"),
        Fetched(e.id, "lab-a", stored_as="x", outcome="placed"),
        Corrupt(e.id, "lab-a", got=MD5),
    ):
        with pytest.raises(MessageError, match="has no say"):
            r.deliver(forged)
    assert r.entry(e.id).state == "uploading"
    with pytest.raises(MessageError, match="offered it"):
        r.deliver(Offer(e.id, "lab-b", name="data.bin", kind="file", size=4, files=1))
    with pytest.raises(MessageError, match="only upload agents offer"):
        r.deliver(Offer(new_entry_id(), "download", name="y", kind="file", size=1, files=1))


def test_download_takes_fetch_and_pushing_only_from_central(tmp_path):
    r = Role("download", tmp_path)
    entry_id = new_entry_id()
    fetch = Fetch(
        entry_id,
        "upload",
        name="x",
        kind="file",
        size=1,
        files=1,
        md5=MD5,
        attempt=1,
        path=f"/srv/central/lab/stored/{entry_id}",
    )
    with pytest.raises(MessageError, match="only 'central'"):
        r.deliver(fetch)
    with pytest.raises(MessageError, match="only 'central'"):
        r.deliver(Pushing(entry_id, "upload", size=1 << 30, path=f"/srv/central/lab/growing/{entry_id}"))
    assert r.state.get(entry_id) is None and r.jobs.pending == []


# The whole path, compared in full (issue 22); sent relative to rrsync's root (issue 23) --------------

PLACE = "/srv/central/lab"


@pytest.mark.parametrize(
    "path, ok",
    [
        ("/srv/central/lab/staging/upload", True),
        ("/srv/central/lab/staging/upload/", True),
        # The attacks of issue 22: the same tail under another directory, a shell command before it.
        ("/tmp/planted/lab/staging/upload", False),
        ("/srv/central/x;touch /srv/central/PWNED;echo /lab/staging/upload", False),
        ("/srv/central/lab/staging/upload/../../../../root/.ssh", False),
        ("/srv//central/lab/staging/upload", False),
        ("/srv/central/lab/staging/upload/more", False),
        ("/srv/central/lab/staging", False),
    ],
)
def test_only_the_announced_place_itself_is_believed_not_a_path_that_ends_the_same_way(path, ok):
    from synkler import places

    assert places.is_exactly(path, PLACE, "staging", "upload") is ok


@pytest.mark.parametrize(
    "report, place",
    [
        (b'{"place": "/srv/central/lab"}', "/srv/central/lab"),
        (b'{"place": "/srv/central/lab/"}', "/srv/central/lab"),
        (b'{"place": "/srv/central/other"}', None),  # another instance's
        (b'{"place": "/srv/../lab"}', None),
        (b'{"place": null}', None),
        (b"[1]", None),
        (b"not json", None),
        (None, None),
    ],
)
def test_centrals_place_is_taken_from_its_report_only_if_shaped_like_the_instances_directory(report, place):
    from synkler import places

    assert places.announced(report, "lab") == place


@pytest.mark.parametrize(
    "path, root, sent",
    [
        ("/srv/central/lab/stored", None, "/srv/central/lab/stored"),
        ("/srv/central/lab/stored/", "/srv/central/lab", "stored"),
        ("/srv/central/lab/staging/upload", "/srv/central/lab/staging/upload", "."),
        ("/srv/central/lab/staging/upload", "/srv/central/lab/", "staging/upload"),
        ("/srv/central/lab/stored", "/srv/central/lab/staging/upload", None),
        ("/srv/central/laboratory/stored", "/srv/central/lab", None),
    ],
)
def test_a_path_on_central_is_sent_relative_to_the_rrsync_root_and_never_outside_it(path, root, sent):
    from synkler import places

    assert places.over_ssh(path, root) == sent


def test_an_admit_arriving_before_central_announced_its_place_waits_and_changes_nothing(tmp_path):
    from synkler.errors import NotYet

    r, entry_id = offered(tmp_path)
    r.jobs.place = None
    with pytest.raises(NotYet):
        r.deliver(Admit(entry_id, "central", attempt=2, dest="/srv/central/lab/staging/upload"))
    assert r.entry(entry_id).state == "offered"
    r.jobs.place = "/srv/central/lab"
    r.deliver(Admit(entry_id, "central", attempt=2, dest="/srv/central/lab/staging/upload"))
    assert r.entry(entry_id).state == "uploading"


def test_a_fetch_naming_the_instances_store_under_another_directory_is_refused(tmp_path):
    r = Role("download", tmp_path)
    entry_id = new_entry_id()
    fetch = Fetch(
        entry_id,
        "central",
        name="x",
        kind="file",
        size=1,
        files=1,
        md5=MD5,
        attempt=1,
        path=f"/tmp/planted/lab/stored/{entry_id}",
    )
    with pytest.raises(MessageError, match="fetch: path"):
        r.deliver(fetch)
    assert r.state.get(entry_id) is None


def test_the_runtime_keeps_a_message_queued_while_centrals_place_is_unknown(tmp_path):
    from synkler import messages

    r, entry_id = offered(tmp_path)
    r.jobs.place = None
    body = messages.encode(Admit(entry_id, "central", attempt=2, dest="/srv/central/lab/staging/upload"))
    assert r.apply(body) == ("requeue", [])
    r.jobs.place = "/srv/central/lab"
    assert r.apply(body) == ("ack", [])
    assert r.entry(entry_id).state == "uploading"


@pytest.mark.parametrize(
    "path, place",
    [
        ("/srv/central/lab/staging/upload", "/srv/central/lab"),
        ("/srv/central/lab/staging/upload/", "/srv/central/lab"),
        ("/srv/central/other/staging/upload", None),  # another instance's
        ("/srv/central/../lab/staging/upload", None),
        ("/srv/central/lab/staging/download", None),  # not the parts the message may name
        ("lab/staging/upload", None),
    ],
)
def test_a_message_from_central_vouches_for_its_place_only_if_shaped_like_the_instance_dir(path, place):
    from synkler import places

    assert places.vouched(path, "lab", "staging", "upload") == place


def test_with_authenticate_an_admit_central_sent_goes_ahead_while_its_reports_are_held_by_someone(tmp_path):
    """Another agent's login may consume central's presence reports and never ack them: with
    `authenticate`, the broker proves an admit came from central's login, so its dest says where
    central's directory is (issue 22: no single login stalls the relay)."""
    from synkler.errors import NotYet

    r = Role("upload", tmp_path, authenticate=True, broker_username="upload@lab")
    entry_id = r.given("offered", peer="central", attempt=1).id
    r.jobs.place = None
    with pytest.raises(NotYet):  # not shaped like this instance's directory: it vouches for nothing
        r.deliver(Admit(entry_id, "central", attempt=2, dest="/tmp/planted/other/staging/upload"))
    assert r.entry(entry_id).state == "offered"
    r.deliver(Admit(entry_id, "central", attempt=2, dest="/srv/central/lab/staging/upload"))
    assert r.entry(entry_id).state == "uploading"
