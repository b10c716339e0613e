"""A push or pull over SFTP goes on from what an earlier run left only when that is the start of
the file: a real chrooted internal-sftp server, real files, one hop at a time (the relay's own
cuts are in test_sftp_relay.py)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml
from support.relay_helpers import write_random
from support.sftphost import chrooted_sshd, need_root, sftp_settings

from synkler.config import load_config
from synkler.errors import Interrupted
from synkler.hops import checksum, sftp, transfer

SIZE = 6 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_root()
    with chrooted_sshd(tmp_path_factory.mktemp("sftp-sshd")) as s:
        yield s
    sftp.close_all()


@pytest.fixture
def hop(server, tmp_path_factory):
    """(upload config, download config, a local directory, central's directory inside the chroot)."""
    central = server.sftp_chroot / f"resume-{os.getpid()}-{len(os.listdir(server.sftp_chroot))}"
    central.mkdir()
    local = tmp_path_factory.mktemp("local")
    configs = []
    for mode in ("upload", "download"):
        path = local.parent / f"{local.name}-{mode}.conf"
        path.write_text(
            yaml.safe_dump(
                {
                    "mode": mode,
                    "file_dir": str(local),
                    "synkler_server": "127.0.0.1",
                    "state_db": str(local.parent / f"{local.name}-{mode}.db"),
                    "pidfile": str(local.parent / f"{local.name}-{mode}.pid"),
                    **sftp_settings(server),
                }
            )
        )
        configs.append(load_config(path))
    return configs[0], configs[1], local, central


def _partial(path: Path, data: bytes, mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_a_push_goes_on_from_a_partial_file_that_is_the_start_of_the_source(hop, caplog):
    up, _down, local, central = hop
    write_random(local / "big.bin", SIZE)
    data = (local / "big.bin").read_bytes()
    _partial(central / ".synkler-partial" / "big.bin", data[: SIZE // 2])
    with caplog.at_level(logging.INFO, logger="synkler"):
        result = transfer.push(up, str(local), ["big.bin"], str(central))
    assert result.ok, result.output
    assert (central / "big.bin").read_bytes() == data
    assert f"big.bin: resuming the push from the {SIZE // 2} of {SIZE} bytes" in caplog.text
    assert sorted(os.listdir(central)) == ["big.bin"]  # the partial dir is gone with its file


@pytest.mark.parametrize("stranger", ["other bytes at its end", "older than the source", "bigger"])
def test_a_push_never_appends_to_a_partial_file_of_other_content(hop, caplog, stranger):
    up, _down, local, central = hop
    write_random(local / "big.bin", SIZE)
    data = (local / "big.bin").read_bytes()
    if stranger == "other bytes at its end":
        left = data[: SIZE // 2 - 1] + bytes([data[SIZE // 2 - 1] ^ 1])
        _partial(central / ".big.bin.Xy12Zq", left)  # a temporary file a killed run left
    elif stranger == "older than the source":
        st = os.stat(local / "big.bin")
        _partial(central / ".synkler-partial" / "big.bin", data[: SIZE // 2], mtime=st.st_mtime - 10)
    else:
        _partial(central / ".synkler-partial" / "big.bin", data + b"more")
    with caplog.at_level(logging.INFO, logger="synkler"):
        result = transfer.push(up, str(local), ["big.bin"], str(central))
    assert result.ok, result.output
    assert (central / "big.bin").read_bytes() == data
    assert "resuming" not in caplog.text
    assert os.listdir(central) == ["big.bin"]  # the stranger is gone, and the partial dir with it


def test_a_pull_goes_on_from_a_partial_file_that_is_the_start_of_the_source_and_not_from_a_stranger(
    hop, caplog
):
    _up, down, local, central = hop
    write_random(central / "good", SIZE)
    write_random(central / "bad", SIZE)
    staging = local / "staging"
    _partial(staging / ".synkler-partial" / "good", (central / "good").read_bytes()[: SIZE // 3])
    _partial(staging / ".synkler-partial" / "bad", os.urandom(SIZE // 3))
    with caplog.at_level(logging.INFO, logger="synkler"):
        result = transfer.pull(down, str(central), ["good", "bad"], str(staging))
    assert result.ok, result.output
    for name in ("good", "bad"):
        assert (staging / name).read_bytes() == (central / name).read_bytes(), name
    assert f"good: resuming the pull from the {SIZE // 3} of {SIZE} bytes" in caplog.text
    assert "bad: resuming" not in caplog.text
    assert sorted(os.listdir(staging)) == ["bad", "good"]


def test_an_early_pull_appends_what_central_has_beyond_the_copy_and_a_missing_file_says_so(hop):
    _up, down, local, central = hop
    write_random(central / "growing", SIZE)
    copy = local / "copy"
    copy.write_bytes((central / "growing").read_bytes()[:1000])
    assert transfer.pull_more(down, str(central / "growing"), str(copy)).ok
    assert copy.read_bytes() == (central / "growing").read_bytes()
    missing = transfer.pull_more(down, str(central / "not-yet"), str(local / "other"))
    assert not missing.ok and not missing.link_down
    from synkler.hops.pull import _MISSING

    assert _MISSING.search(missing.output), missing.output


def test_names_that_are_not_utf8_travel_byte_exact_both_ways(hop):
    up, down, local, central = hop
    name = os.fsdecode(b"caf\xe9 #1")  # Latin-1: not UTF-8
    (local / name).write_bytes(b"one")
    tree = local / "tree"
    (tree / os.fsdecode(b"sub\xff")).mkdir(parents=True)
    (tree / os.fsdecode(b"sub\xff") / os.fsdecode(b"\xe8t\xe9")).write_bytes(b"two")
    assert transfer.push(up, str(local), [name, "tree"], str(central)).ok
    assert (central / name).read_bytes() == b"one"
    assert (central / "tree" / os.fsdecode(b"sub\xff") / os.fsdecode(b"\xe8t\xe9")).read_bytes() == b"two"
    back = local / "back"
    result = transfer.pull(down, str(central), [name, "tree"], str(back))
    assert result.ok, result.output
    assert os.listdir(os.fsencode(back / "tree")) == [b"sub\xff"]
    assert (back / "tree" / os.fsdecode(b"sub\xff") / os.fsdecode(b"\xe8t\xe9")).read_bytes() == b"two"
    assert (back / name).read_bytes() == b"one"


def test_no_sftp_push_or_pull_starts_once_the_agent_is_stopping(hop):
    # stop_all ends the runs going on; one a job would begin after it would run unended.
    up, down, local, central = hop
    (local / "a.bin").write_bytes(b"one")
    (central / "b.bin").write_bytes(b"two")
    checksum.STOPPING.set()
    try:
        with pytest.raises(Interrupted):
            transfer.push(up, str(local), ["a.bin"], str(central))
        with pytest.raises(Interrupted):
            transfer.pull(down, str(central), ["b.bin"], str(local / "staging"))
        with pytest.raises(Interrupted):
            transfer.pull_more(down, str(central / "b.bin"), str(local / "copy"))
    finally:
        checksum.STOPPING.clear()
    assert sorted(os.listdir(central)) == ["b.bin"] and sorted(os.listdir(local)) == ["a.bin"]
    assert transfer.push(up, str(local), ["a.bin"], str(central)).ok  # the next start pushes it
    assert (central / "a.bin").read_bytes() == b"one"
