"""The SFTP transport's decisions, without a server: where paths go in a chroot, which partial
copies may be resumed, how failures are classed, and which host keys are believed."""

from __future__ import annotations

import errno
import os
import socket
from types import SimpleNamespace

import paramiko
import pytest

from synkler.hops import sftp, sftpcopy, transfer
from synkler.hops.transfer import Result


def cfg(**changes):
    values = dict(sftp_root=None, central_host="synkler@central", transport="sftp")
    values.update(changes)
    return SimpleNamespace(**values)


def test_paths_on_central_are_sent_from_the_chroot_and_a_path_outside_it_is_refused():
    chrooted = cfg(sftp_root="/srv/synkler")
    assert sftp.remote_path(chrooted, "/srv/synkler/data/lab/staging/upload") == "/data/lab/staging/upload"
    assert sftp.remote_path(chrooted, "/srv/synkler") == "/"
    assert sftp.remote_path(cfg(), "/srv/synkler/data/lab/stored") == "/srv/synkler/data/lab/stored"
    with pytest.raises(transfer.OutsideRoot, match="outside sftp_root"):
        sftp.remote_path(chrooted, "/srv/synkler-other/lab")


def test_only_rsync_style_temporary_names_of_the_same_name_count_as_its_leftovers():
    assert sftpcopy.is_temporary_of(".big.bin.Ab3dE9", "big.bin")
    assert len(sftpcopy.temporary("big.bin")) == len(".big.bin.") + 6
    assert sftpcopy.is_temporary_of(sftpcopy.temporary("a b"), "a b")
    assert not sftpcopy.is_temporary_of(".big.bin.Ab3dE", "big.bin")
    assert not sftpcopy.is_temporary_of(".big.binx.Ab3dE9", "big.bin")
    assert not sftpcopy.is_temporary_of("big.bin", "big.bin")


@pytest.mark.parametrize(
    "size, mtime, resumable",
    [
        (500, 2000, True),  # half of it, written after the source last changed
        (1000, 2000, True),  # all of it (the rename did not happen)
        (1001, 2000, False),  # bigger than the source: a stranger
        (0, 2000, False),  # nothing to go on from
        (500, 999, False),  # older than the source's last change: of another version
    ],
)
def test_a_partial_copy_is_a_candidate_only_if_no_bigger_and_not_older_than_the_source(
    size, mtime, resumable
):
    assert sftpcopy._prefix(size, mtime, source_size=1000, source_mtime=1000.5) is resumable


def test_a_partial_copy_whose_tail_differs_from_the_source_is_not_resumed():
    assert sftpcopy._tail_matches(b"abc" * 100, b"abc" * 100)
    assert not sftpcopy._tail_matches(b"abc" * 100, b"abd" + b"abc" * 99)


@pytest.mark.parametrize(
    "error, code, link_down, person",
    [
        (socket.timeout("timed out"), 255, True, False),
        (ConnectionResetError(errno.ECONNRESET, "reset"), 255, True, False),
        (OSError(errno.ECONNREFUSED, "refused"), 255, True, False),
        (OSError(errno.ENOSPC, "No space left on device"), 11, False, False),
        (PermissionError(errno.EACCES, "Permission denied"), 23, False, False),
    ],
)
def test_failures_are_classed_as_rsyncs_are(error, code, link_down, person):
    got, words = sftp._os_error(error)
    result = Result(False, got, words)
    assert (got, result.link_down, result.needs_person) == (code, link_down, person)
    assert result.out_of_space is (error.errno == errno.ENOSPC)


def test_a_refused_host_key_or_login_needs_a_person_as_sshs_refusals_do():
    for words in (
        "Host key verification failed: no host key is known for [central]:2222 in /k",
        "Host key verification failed: REMOTE HOST IDENTIFICATION HAS CHANGED for central",
        "synkler@central: Permission denied (publickey): no key was accepted (tried /k)",
        "ssh: Could not resolve hostname nowhere: Name or service not known",
    ):
        assert Result(False, 255, words).needs_person, words


def _server(key: paramiko.PKey) -> SimpleNamespace:
    return SimpleNamespace(get_remote_server_key=lambda: key)


def test_only_the_host_key_in_known_hosts_is_believed(tmp_path):
    ours, other = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    theirs = paramiko.RSAKey.generate(1024)  # of a kind known_hosts does not hold for the host
    known = tmp_path / "known_hosts"
    known.write_text(f"[central]:2222 {ours.get_name()} {ours.get_base64()}\n")
    sftp._check_host_key(_server(ours), "central", 2222, [str(known)])  # believed
    with pytest.raises(sftp.Refused, match="Host key verification failed: no host key is known for central"):
        sftp._check_host_key(_server(ours), "central", 22, [str(known)])  # another port: another host
    with pytest.raises(
        sftp.Refused, match="Host key verification failed: REMOTE HOST IDENTIFICATION HAS CHANGED"
    ):
        sftp._check_host_key(_server(theirs), "central", 2222, [str(known)])
    known.write_text(f"[central]:2222 {other.get_name()} {other.get_base64()}\n")
    with pytest.raises(sftp.Refused, match="CHANGED"):
        sftp._check_host_key(_server(ours), "central", 2222, [str(known)])
    with pytest.raises(sftp.Refused, match="no host key is known"):
        sftp._check_host_key(_server(ours), "central", 2222, [str(tmp_path / "missing")])


@pytest.mark.parametrize("raw", [b"../../.ssh", b"a/b", b"/etc", b"", b"..", b".", b"x\0y"])
def test_a_name_listed_by_the_server_that_is_no_file_name_ends_the_run_before_anything_is_written(raw):
    # Only a server that lies lists one (a file system makes no such name); a pull would have joined it
    # to its place and written outside it.
    with pytest.raises(OSError, match="no file name"):
        sftpcopy.component(raw, "/data/lab/stored/e1")
    assert sftpcopy.component(b"caf\xe9 #1;x", "/d") == os.fsdecode(b"caf\xe9 #1;x")
