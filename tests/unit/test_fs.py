"""Moving and deleting entries must never clobber or escape: no overwrite on rename, no follow on delete."""

from __future__ import annotations

import errno
import mmap
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable

import pytest

from synkler.linux import fs, libc
from synkler.linux.fs import (
    free_bytes,
    fsync_dir,
    open_for_writing,
    remove_tree,
    rename_noreplace,
    total_bytes,
    written_or_stat,
)

NOBODY = 65534


def make_tree(root: Path) -> Path:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "top.txt").write_bytes(b"top")
    (root / "sub" / "deep" / "leaf.bin").write_bytes(b"\x00leaf")
    os.symlink("../top.txt", root / "sub" / "rel-link")
    return root


def snapshot(path: Path) -> dict:
    """Everything about a tree that a rename must carry along unchanged."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(path))
            if full.is_symlink():
                result[rel] = ("link", os.readlink(full))
            elif full.is_dir():
                result[rel] = ("dir",)
            else:
                result[rel] = ("file", full.read_bytes())
    return result


def run_unprivileged(tmp_path: Path, action: Callable[[], None]) -> None:
    """Run action as a non-root user, so permission handling is really exercised even when tests run as root.

    As root, the work area is handed to nobody and a forked child drops to that
    uid; it works with paths relative to the area because tmp_path's ancestors
    are not searchable by nobody.
    """
    if os.geteuid() != 0:
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            action()
        finally:
            os.chdir(cwd)
        return
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            os.lchown(name, NOBODY, NOBODY)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            os.chdir(tmp_path)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
            status = 0
        except BaseException:  # noqa: BLE001 - the forked child must always reach os._exit
            traceback.print_exc()
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "unprivileged action failed (see stderr)"


# --- rename_noreplace ------------------------------------------------------------------------------


def test_rename_noreplace_moves_a_file(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"data")
    rename_noreplace(tmp_path / "a", tmp_path / "b")
    assert not (tmp_path / "a").exists()
    assert (tmp_path / "b").read_bytes() == b"data"


def test_rename_noreplace_moves_a_directory_tree_intact(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    before = snapshot(src)
    rename_noreplace(src, tmp_path / "dst")
    assert not src.exists()
    assert snapshot(tmp_path / "dst") == before


def test_rename_noreplace_moves_a_symlink_itself_not_its_target(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"t")
    os.symlink("target", tmp_path / "link")
    rename_noreplace(tmp_path / "link", tmp_path / "moved")
    assert os.readlink(tmp_path / "moved") == "target"
    assert not os.path.lexists(tmp_path / "link")
    assert (tmp_path / "target").read_bytes() == b"t"


def test_rename_noreplace_accepts_str_and_bytes_paths(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x")
    rename_noreplace(str(tmp_path / "a"), os.fsencode(tmp_path / "b"))
    assert (tmp_path / "b").read_bytes() == b"x"


def _occupy(kind: str, path: Path) -> None:
    """Put something at the destination that a rename must not replace."""
    if kind == "existing file":
        path.write_bytes(b"precious")
    elif kind == "empty dir":
        path.mkdir()
    elif kind == "dangling symlink":
        os.symlink("does-not-exist", path)
    else:
        path.mkdir()
        (path / "inside").write_bytes(b"precious")


DESTINATIONS = ["existing file", "empty dir", "dangling symlink", "full dir"]
SOURCES = ["file", "dir", "symlink"]


def _make_source(kind: str, path: Path) -> None:
    if kind == "file":
        path.write_bytes(b"new data")
    elif kind == "dir":
        make_tree(path)
    else:
        os.symlink("somewhere", path)


def _state(path: Path) -> object:
    if path.is_symlink():
        return ("link", os.readlink(path))
    if path.is_dir():
        return ("dir", snapshot(path))
    return ("file", path.read_bytes())


@pytest.mark.parametrize("fallback", [False, True], ids=["renameat2", "fallback"])
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("destination", DESTINATIONS)
def test_rename_noreplace_refuses_any_occupied_destination_and_touches_neither_side(
    tmp_path: Path, monkeypatch, destination: str, source: str, fallback: bool
) -> None:
    if fallback:
        monkeypatch.setattr(fs, "_renameat2_noreplace", _raise_enosys)
    src = tmp_path / "src"
    dst = tmp_path / "dst"
    _make_source(source, src)
    _occupy(destination, dst)
    src_before, dst_before = _state(src), _state(dst)
    with pytest.raises(FileExistsError):
        rename_noreplace(src, dst)
    assert _state(src) == src_before
    assert _state(dst) == dst_before


def test_rename_noreplace_reports_a_missing_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        rename_noreplace(tmp_path / "nope", tmp_path / "dst")
    assert not os.path.lexists(tmp_path / "dst")


def test_rename_noreplace_rejects_a_path_with_a_nul_byte(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x")
    with pytest.raises(ValueError):
        rename_noreplace(str(tmp_path / "a"), str(tmp_path / "b") + "\0c")
    assert (tmp_path / "a").exists()


def _raise_enosys(src: bytes, dst: bytes) -> None:
    raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))


def _raise_einval(src: bytes, dst: bytes) -> None:
    raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))


@pytest.mark.parametrize("unsupported", [_raise_enosys, _raise_einval], ids=["ENOSYS", "EINVAL"])
@pytest.mark.parametrize("source", SOURCES)
def test_the_fallback_moves_files_dirs_and_symlinks_when_renameat2_is_unavailable(
    tmp_path: Path, monkeypatch, unsupported, source: str
) -> None:
    monkeypatch.setattr(fs, "_renameat2_noreplace", unsupported)
    src = tmp_path / "src"
    _make_source(source, src)
    before = _state(src)
    rename_noreplace(src, tmp_path / "dst")
    assert not os.path.lexists(src)
    assert _state(tmp_path / "dst") == before


def test_the_fallback_keeps_a_file_single_linked_after_the_move(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fs, "_renameat2_noreplace", _raise_enosys)
    (tmp_path / "src").write_bytes(b"x")
    rename_noreplace(tmp_path / "src", tmp_path / "dst")
    assert os.lstat(tmp_path / "dst").st_nlink == 1


def test_the_fallback_renames_when_the_filesystem_refuses_hard_links(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fs, "_renameat2_noreplace", _raise_enosys)

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(fs.os, "link", no_links)
    (tmp_path / "src").write_bytes(b"x")
    rename_noreplace(tmp_path / "src", tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == b"x"
    (tmp_path / "again").write_bytes(b"y")
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "again", tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == b"x"


def test_other_renameat2_errors_are_raised_without_fallback(tmp_path: Path, monkeypatch) -> None:
    def cross_device(src: bytes, dst: bytes) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(fs, "_renameat2_noreplace", cross_device)
    monkeypatch.setattr(fs, "_rename_fallback", pytest.fail)
    (tmp_path / "src").write_bytes(b"x")
    with pytest.raises(OSError) as info:
        rename_noreplace(tmp_path / "src", tmp_path / "dst")
    assert info.value.errno == errno.EXDEV


def test_the_real_syscall_names_both_paths_in_its_error(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"1")
    (tmp_path / "b").write_bytes(b"2")
    with pytest.raises(FileExistsError) as info:
        fs._renameat2_noreplace(os.fsencode(tmp_path / "a"), os.fsencode(tmp_path / "b"))
    assert info.value.filename == str(tmp_path / "a")
    assert info.value.filename2 == str(tmp_path / "b")


# --- remove_tree -----------------------------------------------------------------------------------


def test_remove_tree_deletes_a_tree_with_a_read_only_subdirectory(tmp_path: Path) -> None:
    area = tmp_path / "area"
    tree = make_tree(area / "tree")
    locked = tree / "locked"
    (locked / "nested").mkdir(parents=True)
    (locked / "one").write_bytes(b"1")
    (locked / "nested" / "two").write_bytes(b"2")
    os.chmod(locked / "nested", 0o555)
    os.chmod(locked, 0o555)
    run_unprivileged(area, lambda: remove_tree("tree"))
    assert not os.path.lexists(tree)


def test_remove_tree_deletes_a_tree_with_an_unreadable_subdirectory(tmp_path: Path) -> None:
    area = tmp_path / "area"
    tree = make_tree(area / "tree")
    (tree / "closed").mkdir()
    (tree / "closed" / "f").write_bytes(b"x")
    os.chmod(tree / "closed", 0o000)
    os.chmod(tree, 0o555)
    run_unprivileged(area, lambda: remove_tree("tree"))
    assert not os.path.lexists(tree)


def test_remove_tree_deletes_a_tree_whose_directories_lack_search_permission(tmp_path: Path) -> None:
    area = tmp_path / "area"
    tree = make_tree(area / "tree")
    (tree / "noexec" / "child").mkdir(parents=True)
    (tree / "noexec" / "child" / "f").write_bytes(b"x")
    (tree / "noexec" / "g").write_bytes(b"y")
    os.chmod(tree / "noexec" / "child", 0o600)
    os.chmod(tree / "noexec", 0o600)
    run_unprivileged(area, lambda: remove_tree("tree"))
    assert not os.path.lexists(tree)


def test_remove_tree_deletes_a_symlink_without_touching_the_directory_it_points_to(tmp_path: Path) -> None:
    outside = make_tree(tmp_path / "outside")
    before = snapshot(outside)
    os.symlink(outside, tmp_path / "link")
    remove_tree(tmp_path / "link")
    assert not os.path.lexists(tmp_path / "link")
    assert snapshot(outside) == before


def test_remove_tree_does_not_follow_symlinks_inside_the_tree(tmp_path: Path) -> None:
    outside = make_tree(tmp_path / "outside")
    before = snapshot(outside)
    tree = make_tree(tmp_path / "tree")
    os.symlink(outside, tree / "sub" / "to-outside")
    os.symlink(outside / "top.txt", tree / "to-outside-file")
    remove_tree(tree)
    assert not os.path.lexists(tree)
    assert snapshot(outside) == before


def test_remove_tree_deletes_a_single_file_and_a_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    os.symlink("nowhere", tmp_path / "dangling")
    remove_tree(tmp_path / "f")
    remove_tree(tmp_path / "dangling")
    assert os.listdir(tmp_path) == []


def test_remove_tree_accepts_a_missing_path(tmp_path: Path) -> None:
    remove_tree(tmp_path / "never-existed")
    remove_tree(tmp_path / "missing-parent" / "child")


def test_remove_tree_copes_with_a_deep_tree(tmp_path: Path) -> None:
    tree = tmp_path / "deep"
    current = tree
    current.mkdir()
    fd = os.open(current, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(300):  # deeper than comfortable for path-based recursion, built with relative ops
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(b"bottom")
    finally:
        os.close(fd)
    remove_tree(tree)
    assert not os.path.lexists(tree)


def test_remove_tree_handles_awkward_names(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for name in ["with space", "new\nline", "é", b"\xff\xfe".decode("utf-8", "surrogateescape")]:
        (tree / name).mkdir(parents=True)
        (tree / name / name).write_bytes(b"x")
    remove_tree(tree)
    assert not os.path.lexists(tree)


def test_remove_tree_leaves_no_open_descriptors(tmp_path: Path) -> None:
    before = set(os.listdir("/proc/self/fd"))
    remove_tree(make_tree(tmp_path / "tree"))
    assert set(os.listdir("/proc/self/fd")) == before


# --- fsync_dir and space ---------------------------------------------------------------------------


def test_fsync_dir_accepts_a_directory(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    fsync_dir(str(tmp_path))


def test_fsync_dir_refuses_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "f")


def test_free_and_total_bytes_match_statvfs(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    assert total_bytes(tmp_path) == st.f_blocks * st.f_frsize
    assert 0 <= free_bytes(tmp_path) <= total_bytes(tmp_path)
    assert abs(free_bytes(tmp_path) - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024


@pytest.mark.skipif(os.uname().machine not in fs._SYS_RENAMEAT2, reason="no known syscall number here")
def test_the_raw_syscall_is_used_when_libc_lacks_a_renameat2_wrapper(tmp_path: Path, monkeypatch) -> None:
    class OldLibc:
        """A C library from before glibc 2.28: syscall() but no renameat2()."""

        syscall = libc.load().syscall

    monkeypatch.setattr(libc, "load", OldLibc)
    monkeypatch.setattr(fs, "_rename_fallback", pytest.fail)
    (tmp_path / "a").write_bytes(b"1")
    (tmp_path / "b").write_bytes(b"2")
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "a", tmp_path / "b")
    rename_noreplace(tmp_path / "a", tmp_path / "c")
    assert (tmp_path / "c").read_bytes() == b"1"
    assert (tmp_path / "b").read_bytes() == b"2"


# ---------------------------------------------------------------------------
# open_for_writing
# ---------------------------------------------------------------------------


def test_open_for_writing_says_no_for_a_closed_file_and_for_readers(tmp_path: Path) -> None:
    f = tmp_path / "done.raw"
    f.write_bytes(b"x" * 100)
    assert open_for_writing(f) is False
    with open(f, "rb"):
        assert open_for_writing(f) is False


def test_open_for_writing_sees_a_writer_in_another_process_until_it_closes(tmp_path: Path) -> None:
    f = tmp_path / "growing.raw"
    f.write_bytes(b"")
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; f = open(sys.argv[1], 'ab'); print('open', flush=True); sys.stdin.read()",
            str(f),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert writer.stdout.readline() == b"open\n"
        assert open_for_writing(f) is True
    finally:
        writer.communicate(b"")
    assert open_for_writing(f) is False


def test_open_for_writing_sees_a_writable_mapping_after_its_descriptor_is_closed(tmp_path: Path) -> None:
    f = tmp_path / "mapped.raw"
    f.write_bytes(b"\0" * 4096)
    with open(f, "r+b") as fh:
        mapping = mmap.mmap(fh.fileno(), 4096)
    try:
        assert open_for_writing(f) is True
    finally:
        mapping.close()
    assert open_for_writing(f) is False


def test_open_for_writing_leaves_the_file_free_for_a_writer_at_once(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    assert open_for_writing(f) is False
    fd = os.open(f, os.O_WRONLY | os.O_NONBLOCK)  # would fail with EWOULDBLOCK if a lease were left
    os.close(fd)


def test_a_file_no_process_writes_comes_with_its_stat_taken_under_the_lease(tmp_path: Path) -> None:
    f = tmp_path / "done.raw"
    f.write_bytes(b"x" * 100)
    writing, st = written_or_stat(f)
    assert writing is False and st is not None
    lst = os.lstat(f)
    assert (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (
        lst.st_ino, lst.st_size, lst.st_mtime_ns, lst.st_ctime_ns,
    )  # fmt: skip
    with open(f, "ab"):
        assert written_or_stat(f) == (True, None)
    (tmp_path / "link").symlink_to("done.raw")
    (tmp_path / "dir").mkdir()
    for other in ("link", "dir", "missing"):
        assert written_or_stat(tmp_path / other) == (None, None)


def test_open_for_writing_cannot_tell_for_directories_symlinks_and_missing_names(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"x")
    (tmp_path / "link").symlink_to("target")
    (tmp_path / "dir").mkdir()
    assert open_for_writing(tmp_path / "link") is None
    assert open_for_writing(tmp_path / "dir") is None
    assert open_for_writing(tmp_path / "missing") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a check as another user")
def test_open_for_writing_cannot_tell_for_someone_else_s_file_without_cap_lease() -> None:
    top = Path(tempfile.mkdtemp(prefix="synkler-lease-", dir="/tmp"))  # pytest's tmp_path is root's only
    try:
        top.chmod(0o755)
        f = top / "theirs.raw"
        f.write_bytes(b"x")
        f.chmod(0o644)
        assert check_as_nobody(f) == "cannot tell"
        os.chown(f, 65534, 65534)  # the same file, now nobody's own: the lease tells
        assert check_as_nobody(f) == "not open for writing"
    finally:
        remove_tree(top)


def check_as_nobody(f: Path) -> str:
    """open_for_writing(f) in a child running as nobody (no CAP_LEASE), who can read f."""
    answers = {10: "not open for writing", 11: "open for writing", 12: "cannot tell"}
    pid = os.fork()
    if pid == 0:
        code = 1  # an exception: e.g. nobody cannot read the file after all
        try:
            os.setgid(65534)
            os.setuid(65534)
            f.read_bytes()
            code = {False: 10, True: 11, None: 12}[open_for_writing(f)]
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return answers.get(code, f"exit {code}")
