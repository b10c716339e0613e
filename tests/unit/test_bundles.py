"""Which settled small files go together as bundles (synkler.bundles.plan), and the members table."""

from __future__ import annotations

from pathlib import Path

from synkler import bundles
from synkler.hops.checksum import md5_entry
from synkler.state import Entry, State


def files(n: int, size: int = 4096) -> list[tuple[str, int]]:
    return [(f"f{i:04d}", size) for i in range(n)]


def test_a_file_that_arrives_alone_is_never_bundled():
    assert bundles.plan(files(1), files=1000, least=50, max_bytes=64 << 20) == []


def test_fewer_files_than_the_least_wait_for_nothing_and_go_on_their_own():
    assert bundles.plan(files(49), files=1000, least=50, max_bytes=64 << 20) == []


def test_enough_files_at_once_go_in_bundles_of_at_most_bundle_files_in_the_order_found():
    plan = bundles.plan(files(250), files=100, least=50, max_bytes=64 << 20)
    assert [len(b) for b in plan] == [100, 100, 50]
    assert [n for b in plan for n in b] == [n for n, _ in files(250)]


def test_a_bundle_holds_at_most_max_bytes():
    plan = bundles.plan(files(10, size=300), files=1000, least=2, max_bytes=1000)
    assert [len(b) for b in plan] == [3, 3, 3]  # the tenth is left alone: no bundle of one file
    assert "f0009" not in [n for b in plan for n in b]


def test_a_last_bundle_of_one_file_is_no_bundle():
    plan = bundles.plan(files(101), files=100, least=50, max_bytes=64 << 20)
    assert [len(b) for b in plan] == [100]


def test_bundle_files_below_two_means_no_bundles():
    assert bundles.plan(files(500), files=1, least=2, max_bytes=64 << 20) == []


def test_members_are_kept_by_name_bytes_and_found_as_the_latest_version_of_their_names(tmp_path: Path):
    state = State(tmp_path / "s.sqlite")
    odd = b"caf\xe9.dat".decode("utf-8", "surrogateescape")  # not UTF-8: kept byte-exact
    with state.transaction():
        old = state.insert(Entry(id="a" * 32, name="x", kind="bundle", md5=None, state="done", created=1.0))
        new = state.insert(Entry(id="b" * 32, name="y", kind="bundle", md5=None, state="sent", created=2.0))
        gone = state.insert(
            Entry(id="c" * 32, name="z", kind="bundle", md5=None, state="superseded", created=3.0)
        )
        bundles.add(state, old.id, [("one", 1, "s1"), (odd, 2, "s2")])
        bundles.add(state, new.id, [("one", 1, "s3")])
        bundles.add(state, gone.id, [("one", 1, "s4"), ("two", 2, "s5")])
    found = bundles.latest_by_names(state, ["one", odd, "two", "three"], ignored=("superseded",))
    assert set(found) == {"one", odd}
    assert found["one"].member.bundle == new.id and found["one"].member.signature == "s3"
    assert found[odd].member.name == odd and found[odd].state == "done"
    with state.transaction():
        bundles.set_each(state, old.id, "md5", [(1, "m1"), (2, "m2")])
        assert bundles.set_all(state, old.id, cleanup="pending", where=(None,)) == 2
        bundles.set_each(state, old.id, "cleanup", [(2, "done")])
    assert [(m.seq, m.md5, m.cleanup) for m in bundles.of(state, old.id)] == [
        (1, "m1", "pending"),
        (2, "m2", "done"),
    ]
    assert bundles.count(state, old.id) == {"pending": 1, "done": 1}
    assert [m.seq for m in bundles.of(state, old.id, cleanup="done")] == [2]


def test_members_scripts_run_once_each_and_a_journal_left_by_a_killed_agent_is_collected(tmp_path: Path):
    from synkler.config.load import parse_config
    from synkler.hops import cleanup
    from synkler.hops.transfer import Result

    ran = tmp_path / "ran"
    files = tmp_path / "files"
    files.mkdir()
    script = f'sh -c \'printf "%s\\n" "$1" >> {ran}\' sh %f'
    cfg = parse_config(
        {
            "mode": "upload",
            "id": "lab",
            "file_dir": str(files),
            "synkler_server": "c",
            "cleanup_script": script,
        },
        tmp_path / "synkler.conf",
        environ={},
        home=tmp_path,
    )
    for n in ("a", "b", "c", "d"):
        (files / n).write_bytes(n.encode())
    content = {n: cleanup.Content("file", md5_entry(files / n), None) for n in "abcd"}
    scripts = [(i, n, str(files / n), content[n]) for i, n in enumerate("abcd", 1)]
    # An earlier run of the agent: a's script ended, b's started and its runner died.
    journal = cleanup.journal_of(cfg, "x" * 32)
    Path(journal).write_text('{"start": 1}\n{"end": 1, "returncode": 0, "output": ""}\n{"start": 2}\n')
    (files / "d").write_bytes(b"other content")  # d no longer holds what was delivered
    got = cleanup.run_members(cfg, "x" * 32, scripts)
    assert got[0] == Result(True, 0, "", ())
    assert got[1] is None  # interrupted: not run again
    assert isinstance(got[2], Result) and got[2].ok
    assert isinstance(got[3], cleanup.Skipped)
    assert ran.read_text().splitlines() == ["c"]
    assert cleanup.run_members(cfg, "x" * 32, scripts[:3])[2] == got[2]  # collected, not run twice
    assert ran.read_text().splitlines() == ["c"]
    cleanup.forget_journal(cfg, "x" * 32)
    assert not Path(journal).exists()
