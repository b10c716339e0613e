"""The rabbitmqctl commands of `synkler broker-setup` (synkler.broker.users)."""

from __future__ import annotations

import re

import pytest

from synkler.broker.users import commands, permissions


def test_a_password_that_starts_with_a_dash_is_not_taken_for_an_option_by_rabbitmqctl():
    # secrets.token_urlsafe, which broker-setup uses, starts one password in 64 with '-'.
    argv = commands("lab", ["up"], passwords={"central@lab": "-Xy_9", "download@lab": "plain"})
    adds = [a for a in argv if a[0] == "add_user"]
    assert adds[0] == ["add_user", "central@lab", "--", "-Xy_9"]
    assert adds[1] == ["add_user", "download@lab", "--", "plain"]
    assert adds[2] == ["add_user", "up@lab"]  # no password: rabbitmqctl reads it from its input


def permitted(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None


SHARED = ("synkler:lab", "synkler:lab:presence", "synkler:lab:dead")


@pytest.mark.parametrize("mode,name", [("upload", "up"), ("download", "download")])
def test_an_upload_or_download_user_may_configure_only_its_own_queues_never_the_shared_objects(mode, name):
    p = permissions("lab", mode, name)
    assert not any(permitted(p.configure, x) for x in SHARED)
    assert permitted(p.configure, f"synkler:lab:inbox:{name}")
    assert permitted(p.configure, f"synkler:lab:lock:{name}")
    assert permitted(p.configure, f"synkler:lab:agent:{name}")  # 0.5's name: to empty and delete it
    assert permitted(p.configure, f"synkler:lab:holder:{name}")
    assert permitted(p.read, f"synkler:lab:inbox:{name}") and permitted(p.write, f"synkler:lab:inbox:{name}")
    for other in ("central", "download2"):
        for kind in ("inbox", "agent", "lock", "holder"):
            assert not permitted(p.configure, f"synkler:lab:{kind}:{other}")
        assert not permitted(p.read, f"synkler:lab:inbox:{other}")
    assert not permitted(p.configure, "synkler:lab:holder:central")
    assert not permitted(p.read, "synkler:lab:dead")  # read would let it purge the dead letters
    assert p.presence == f"^{re.escape(name)}$"  # writes only its own presence report


def test_only_centrals_user_may_declare_the_shared_objects_and_each_user_writes_only_its_own_report():
    p = permissions("lab", "central", "central")
    assert all(permitted(p.configure, x) for x in SHARED)
    assert not permitted(p.configure, "synkler:lab:agent:download")
    argv = commands("lab", ["up"])
    presence = [a for a in argv if a[0] == "set_topic_permissions" and a[4] == "synkler:lab:presence"]
    assert [(a[3], a[5], a[6]) for a in presence] == [
        ("central@lab", "^central$", "^central$"),
        ("download@lab", "^download$", "^download$"),
        ("up@lab", "^up$", "^up$"),
    ]


def test_with_named_central_and_download_upload_and_download_may_route_only_to_central_by_its_name():
    argv = commands("lab", ["up"], central="hub.1", download="archive")
    routing = [a for a in argv if a[0] == "set_topic_permissions" and a[4] == "synkler:lab"]
    assert [(a[3], a[5]) for a in routing] == [
        ("hub.1@lab", ".*"),
        ("archive@lab", r"^hub\.1$"),  # the name's '.' matches itself only
        ("up@lab", r"^hub\.1$"),
    ]
    assert not permitted(routing[2][5], "hubx1") and permitted(routing[2][5], "hub.1")


def pool_users() -> dict[str, tuple[list[str], list[str], list[str]]]:
    """user -> (its set_permissions, its topic permissions on the instance's exchange, and on the
    presence exchange) in a pool of the centrals hub-a and hub-b with the upload agents up and up2."""
    argv = commands("lab", ["up", "up2"], central=["hub-a", "hub-b"], download="down", pool=True)
    users: dict[str, tuple[list[str], list[str], list[str]]] = {}
    for a in argv:
        if a[0] == "set_permissions":
            users[a[3]] = (a[4:], [], [])
        elif a[0] == "set_topic_permissions":
            users[a[3]][1 if a[4] == "synkler:lab" else 2].extend(a[5:])
    return users


def test_in_a_pool_each_central_has_a_user_that_consumes_the_offers_queues_and_may_not_declare_them():
    users = pool_users()
    assert set(users) == {"hub-a@lab", "hub-b@lab", "down@lab", "up@lab", "up2@lab"}
    for hub in ("hub-a", "hub-b"):
        (configure, write, read), (topic_write, _), _ = users[f"{hub}@lab"]
        for up in ("up", "up2"):
            offers = f"synkler:lab:offers:{up}"
            assert permitted(read, offers)  # consumes it
            assert not permitted(configure, offers) and not permitted(write, offers)  # no delete, no bind
            assert permitted(topic_write, up) and not permitted(topic_write, f"offers:{up}")  # no offer
        assert permitted(topic_write, "down")
        other = "hub-b" if hub == "hub-a" else "hub-a"
        assert not permitted(topic_write, other)  # nothing to another central
        for kind in ("inbox", "lock", "holder"):
            assert not permitted(configure, f"synkler:lab:{kind}:{other}")
        assert not permitted(read, f"synkler:lab:inbox:{other}")


def test_in_a_pool_an_upload_user_declares_only_its_own_offers_queue_and_sends_to_every_central():
    users = pool_users()
    (configure, write, read), (topic_write, topic_read), _ = users["up@lab"]
    assert permitted(configure, "synkler:lab:offers:up") and permitted(write, "synkler:lab:offers:up")
    assert permitted(read, "synkler:lab:offers:up")  # RabbitMQ's condition to declare it (dead-lettered)
    assert not any(permitted(x, "synkler:lab:offers:up2") for x in (configure, write, read))
    assert [
        k for k in ("hub-a", "hub-b", "offers:up", "offers:up2", "down", "up2") if permitted(topic_write, k)
    ] == [
        "hub-a",
        "hub-b",
        "offers:up",
    ]
    assert permitted(topic_read, "offers:up") and permitted(topic_read, "up")  # binds its queues
    assert not permitted(topic_read, "offers:up2") and not permitted(topic_read, "hub-a")
    (configure, write, read), (topic_write, _), _ = users["down@lab"]
    assert not any(permitted(x, "synkler:lab:offers:up") for x in (configure, write, read))
    assert [k for k in ("hub-a", "hub-b", "offers:up", "up") if permitted(topic_write, k)] == [
        "hub-a",
        "hub-b",
    ]
