"""The relay view's pure parts: agents running, stopped, silent or never seen; reports joined by entry
id; the verdict line; the text escaped."""

from __future__ import annotations

import json

from synkler.observe.relayview import assemble, render
from synkler.observe.report import Report

NOW = 1_800_000_000.0
AGENTS = [("upload", "upload"), ("central", "central"), ("download", "download")]
UP_Q = {"upload": (0, 1), "central": (0, 1), "download": (0, 1)}


def report(role: str, *, at: float = NOW - 1, entries=(), finished=(), **figures) -> dict:
    return {
        "kind": "synkler-presence",
        "v": 1,
        "role": role,
        "agent": role,
        "host": f"{role}-host",
        "pid": 42,
        "version": "0.4.0",
        "since": NOW - 3600,
        "at": at,
        "every": 5.0,
        "stopped": None,
        "counts": figures.pop("counts", {}),
        "unfinished": len(entries),
        "entries": list(entries),
        "finished": list(finished),
        "left_out": 0,
        **figures,
    }


def row(entry_id: str, name: str, state: str, **more) -> dict:
    base = {"id": entry_id, "name": name, "size": 300_000_000, "state": state, "attempt": 1, "tries": 0}
    return {**base, "due": 0, "reason": "", "created": NOW - 60, "updated": NOW - 10, **more}


E1 = "1" * 32
E2 = "2" * 32


def parse(d: dict | None) -> Report | None:
    """A report as an agent reads it from the broker."""
    return None if d is None else Report.decode(json.dumps(d).encode())


def view(reports, queues=UP_Q, dead=0, **kw):
    return assemble("lab", AGENTS, {name: parse(r) for name, r in reports.items()}, queues, dead, NOW, **kw)


def test_an_agent_is_running_stopped_silent_or_never_seen():
    stopped = report("central", stopped=NOW - 180)
    v = view({"upload": report("upload"), "central": stopped, "download": report("download", at=NOW - 60)})
    assert [a["status"] for a in v["agents"]] == ["running", "stopped", "silent"]
    v = view({"upload": report("upload"), "central": None, "download": report("download", at=NOW - 14)})
    assert [a["status"] for a in v["agents"]] == ["running", "never seen", "running"]


def test_silent_means_older_than_three_of_its_own_intervals():
    slow = report("download", at=NOW - 50, every=20.0)
    v = view({"upload": report("upload"), "central": report("central"), "download": slow})
    assert v["agents"][2]["status"] == "running"
    v = view({"upload": report("upload"), "central": report("central"), "download": {**slow, "at": NOW - 61}})
    assert v["agents"][2]["status"] == "silent"


def test_an_older_agents_holder_record_counts_as_heard_at_its_start():
    holder = {"host": "h", "pid": 1, "since": NOW - 5, "token": "t", "version": "0.4.0"}
    v = view({"upload": report("upload"), "central": report("central"), "download": holder})
    assert v["agents"][2]["status"] == "running" and v["agents"][2]["counts"] == {}


def test_reports_are_joined_by_entry_id_with_each_roles_place():
    progress = {
        "what": "push",
        "done": 120_000_000,
        "total": 300_000_000,
        "rate": 12e6,
        "eta": 15,
        "started": NOW - 10,
    }
    v = view(
        {
            "upload": report("upload", entries=[row(E1, "run 42.raw", "uploading")]),
            "central": report("central", entries=[row(E1, "run 42.raw", "uploading", progress=progress)]),
            "download": report("download"),
        }
    )
    (e,) = v["entries"]
    assert e["id"] == E1 and not e["finished"]
    assert e["roles"]["central"]["progress"]["done"] == 120_000_000
    assert set(e["roles"]) == {"upload", "central"}
    assert v["verdict"] == "all flowing: 1 entry in flight, 1 moving now"
    text = "\n".join(render(v, NOW))
    assert "uploading (120 MB of 300 MB, 12 MB/s, 15 s left)" in text


def test_uploads_md5_progress_is_labelled_as_an_md5_not_as_the_push():
    md5 = {"what": "md5", "done": 3_100_000_000, "total": 8_000_000_000, "rate": 410e6, "eta": 12}
    v = view(
        {
            "upload": report("upload", entries=[row(E1, "huge.tar", "uploading", progress=md5)]),
            "central": report("central", entries=[row(E1, "huge.tar", "uploading")]),
            "download": report("download"),
        }
    )
    text = "\n".join(render(v, NOW))
    assert "uploading (md5 3.1 GB of 8 GB, 410 MB/s, 12 s left)" in text


def test_an_entry_is_finished_only_when_no_role_lists_it_as_unfinished():
    v = view(
        {
            "upload": report("upload", entries=[row(E1, "a", "sent")], finished=[row(E2, "b", "done")]),
            "central": report("central", finished=[row(E1, "a", "delivered"), row(E2, "b", "delivered")]),
            "download": report("download", finished=[row(E1, "a", "done", stored_as="a (2)")]),
        }
    )
    by_id = {e["id"]: e for e in v["entries"]}
    assert not by_id[E1]["finished"] and by_id[E2]["finished"]
    assert by_id[E1]["name"] == "a" and by_id[E1]["roles"]["download"]["stored_as"] == "a (2)"


def test_the_view_says_where_download_placed_an_entry_under_another_name():
    # Versioned beside another (`a (2)`) or in its upload agent's directory (subdir_per_upload).
    v = view(
        {
            "upload": report("upload", finished=[row(E1, "a", "done"), row(E2, "x", "done")]),
            "central": report("central", finished=[row(E1, "a", "delivered"), row(E2, "x", "delivered")]),
            "download": report(
                "download",
                finished=[row(E1, "a", "done", stored_as="a (2)"), row(E2, "x", "done", stored_as="lab-a/x")],
            ),
        }
    )
    text = "\n".join(render(v, NOW))
    assert "done (as a (2))" in text and "done (as lab-a/x)" in text


def test_only_the_latest_finished_entries_are_kept_unless_all_are_asked_for():
    done = [row(f"{i:032x}", f"f{i}", "done", updated=NOW - i) for i in range(20)]
    reports = {
        "upload": report("upload", finished=done),
        "central": report("central"),
        "download": report("download"),
    }
    v = view(reports)
    assert [e["name"] for e in v["entries"]] == ["f0", "f1", "f2", "f3", "f4"] and v["finished_listed"] == 20
    assert len(view(reports, all_finished=True)["entries"]) == 20


def test_the_verdict_names_a_stopped_download_and_what_waits_for_it():
    v = view(
        {
            "upload": report("upload", entries=[row(E1, "a", "sent")]),
            "central": report("central", entries=[row(E1, "a", "downloading")], counts={"downloading": 1}),
            "download": report("download", stopped=NOW - 180, at=NOW - 180),
        },
        queues={"upload": (0, 1), "central": (0, 1), "download": (1, 0)},
    )
    assert v["verdict"] == "download stopped 3 min ago: 1 entry waits for it"
    assert render(v, NOW)[0] == "relay 'lab': download stopped 3 min ago: 1 entry waits for it"


def test_the_verdict_names_a_silent_agent_and_for_how_long():
    v = view(
        {
            "upload": report("upload"),
            "central": report("central"),
            "download": report("download", at=NOW - 720),
        }
    )
    assert v["verdict"] == "download silent for 12 min"


def test_a_mistyped_id_shows_the_others_as_never_seen():
    v = view(
        {"upload": report("upload", entries=[row(E1, "a", "offered")]), "central": None, "download": None},
        queues={"upload": (0, 1), "central": (1, 0), "download": None},
        dead=None,
    )
    assert v["verdict"].startswith("central and download never seen under instance 'lab'")
    assert v["broker"]["queues"][2] == {"agent": "download", "exists": False}
    assert view({}, queues={}, dead=None)["verdict"].startswith("no agent of instance 'lab' has reported")


def test_the_verdict_counts_waits_for_disk_a_person_failures_and_dead_letters():
    v = view(
        {
            "upload": report(
                "upload",
                entries=[
                    row(
                        E1,
                        "a",
                        "uploading",
                        tries=3,
                        due=NOW + 30,
                        reason="push to central: link down: exit 255",
                    ),
                    row(E2, "b", "failed", reason="pull from central: exit 23"),
                ],
            ),
            "central": report(
                "central",
                entries=[
                    row(
                        "3" * 32,
                        "c",
                        "waiting",
                        reason="needs 5 bytes, 1 available above the 5% reserve",
                    )
                ],
                counts={"failed": 1},
            ),
            "download": report(
                "download",
                entries=[row("4" * 32, "d", "fetching", reason="pull from central: needs a person: key")],
            ),
        },
        dead=2,
    )
    assert v["problems"] == [
        "1 failed: a person must look (synkler status on the hosts says why)",
        "1 entry needs a person at download",
        "1 waiting for disk at central",
        "1 waiting for the link to central at upload",
        "2 dead-lettered messages in synkler:lab:dead",
    ]
    assert v["entries"][0]["roles"]["upload"]["retry_at"] == NOW + 30


def test_nothing_in_flight_is_said_so():
    v = view({"upload": report("upload"), "central": report("central"), "download": report("download")})
    assert v["verdict"] == "all flowing, nothing in flight" and v["problems"] == []
    assert "0 unfinished entries; 0 of the 0 latest finished shown" in render(v, NOW)


def test_names_reasons_and_hosts_are_escaped_in_the_text_view():
    evil = "\x1b[2Jwipe\udce9"
    v = view(
        {
            "upload": {
                **report("upload", entries=[row(E1, evil, "waiting", reason="why\nnot")]),
                "host": "h\x1b",
            },
            "central": report("central"),
            "download": report("download"),
        }
    )
    text = "\n".join(render(v, NOW))
    assert "\x1b" not in text and "\\x1b[2Jwipe\\xe9" in text and "why\\nnot" in text and "h\\x1b" in text


def test_a_report_that_is_not_one_is_ignored():
    assert Report.decode(None) is None
    assert Report.decode(b"not json") is None
    assert Report.decode(b"[1, 2]") is None
    assert Report.decode(json.dumps({"host": 5}).encode()) is None
    odd = {"host": "h", "at": "soon", "entries": [1, {"id": ""}], "counts": "x"}
    v = view({"upload": odd, "central": report("central"), "download": report("download")})
    assert v["agents"][0]["status"] == "silent" and v["entries"] == []


POOL = [("upload", "upload"), ("central", "central-a"), ("central", "central-b"), ("download", "download")]


def pool_view(reports):
    queues = {name: (0, 1) for _, name in POOL}
    return assemble("lab", POOL, {name: parse(r) for name, r in reports.items()}, queues, 0, NOW)


def test_a_pool_shows_every_central_with_its_room_and_each_entry_at_the_central_that_owns_it():
    held_a = [row(E1, "a.raw", "downloading"), row(E2, "moved.raw", "forgotten", updated=NOW - 2)]
    v = pool_view(
        {
            "upload": report(
                "upload", entries=[row(E1, "a.raw", "uploaded"), row(E2, "moved.raw", "uploading")]
            ),
            "central-a": {**report("central", entries=held_a, counts={"downloading": 1}), "room": 7},
            "central-b": {
                **report("central", entries=[row(E2, "moved.raw", "uploading", updated=NOW - 5)]),
                "agent": "central-b",
                "room": 0,
                "draining": True,
            },
            "download": report("download"),
        }
    )
    centrals = [a for a in v["agents"] if a["role"] == "central"]
    assert [(a["name"], a["status"], a["room"]) for a in centrals] == [
        ("central-a", "running", 7),
        ("central-b", "draining", 0),
    ]
    owners = {
        e["name"]: (e["roles"]["central"]["agent"], e["roles"]["central"]["state"]) for e in v["entries"]
    }
    # moved.raw was re-owned from central-a (forgotten there, though later): central-b owns it.
    assert owners == {"a.raw": ("central-a", "downloading"), "moved.raw": ("central-b", "uploading")}
    text = "\n".join(render(v, NOW))
    assert any("central-a" in line and "room 7" in line for line in text.splitlines())
    assert any("central-b" in line and "draining" in line and "room 0" in line for line in text.splitlines())
    assert any(line.startswith("moved.raw") and "central-b: uploading" in line for line in text.splitlines())


def test_in_a_pool_the_newer_of_two_centrals_rows_is_the_owners():
    # A central killed with the entry stored there reports no more; the new owner's row is newer.
    stale = report("central", at=NOW - 300, entries=[row(E1, "x.raw", "downloading", updated=NOW - 320)])
    fresh = {
        **report("central", entries=[row(E1, "x.raw", "uploading", updated=NOW - 30)]),
        "agent": "central-b",
    }
    v = pool_view({"upload": report("upload"), "central-a": stale, "central-b": fresh, "download": None})
    (e,) = v["entries"]
    assert (e["roles"]["central"]["agent"], e["roles"]["central"]["state"]) == ("central-b", "uploading")
    assert "central 'central-a' silent for" in v["verdict"]


def test_one_central_shows_no_room_and_no_names_in_the_entries():
    v = view({"upload": report("upload"), "central": report("central", entries=[row(E1, "a", "stored")])})
    assert "room" not in v["agents"][1]
    assert not any("central: stored" in line for line in render(v, NOW))


def test_the_files_of_bundles_count_as_files_in_the_verdict_and_the_heading():
    bundle = row(E2, "synkler-bundle-" + E2, "uploading", bundle=400)
    v = view(
        {
            "upload": report("upload", entries=[row(E1, "run 42.raw", "uploading"), bundle]),
            "central": report("central", entries=[row(E2, "synkler-bundle-" + E2, "stored", bundle=400)]),
            "download": report("download"),
        }
    )
    assert v["verdict"] == "all flowing: 1 entry and 400 files in 1 bundle in flight"
    assert [e.get("bundle") for e in v["entries"]] == [None, 400]
    text = render(v, NOW)
    assert "1 unfinished entry and 400 files in 1 bundle; 0 of the 0 latest finished shown" in text
    assert any(line.startswith(f"synkler-bundle-{E2} (400 files)") for line in text)
    alone = view({"upload": report("upload", entries=[bundle]), "central": None, "download": None})
    assert any(line.startswith("400 files in 1 bundle; 0 of the 0") for line in render(alone, NOW))
