"""Behaviour of synkler.config: finding synkler.conf, its defaults and the paths derived from it
(fixtures in conftest.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from support.configkit import error_of, write

from synkler import config
from synkler.config import KEYS, Config, find_config
from synkler.errors import ConfigError

# ---------------------------------------------------------------- defaults


def test_defaults_fill_every_optional_key(parse, file_dir: Path, home: Path, conf_path: Path) -> None:
    cfg = parse()
    state = home / ".local" / "state" / "synkler"
    assert cfg == Config(
        path=conf_path,
        mode="upload",
        id="default",
        name="upload",
        central_name="central",
        download_name="download",
        centrals={},
        uploads=(),
        reown_seconds=40.0,
        reoffer_minutes=10.0,
        file_dir=file_dir,
        keep_minutes=30.0,
        admission_lease_minutes=60.0,
        keep_history_days=30.0,
        pidfile=state / "default-upload.pid",
        state_db=state / "default-upload.sqlite",
        rsync=("rsync",),
        rsync_opts=(),
        rsync_timeout=300,
        stall_seconds=60.0,
        ssh_control_persist=60,
        synkler_server="broker.example",
        central_host="broker.example",
        rrsync_root=None,
        transport="rsync",
        sftp_port=None,
        sftp_identity=None,
        known_hosts=None,
        sftp_root=None,
        broker_tls=False,
        broker_tls_server_name=None,
        broker_ca_file=None,
        broker_cert_file=None,
        broker_key_file=None,
        broker_login="password",
        broker_port=5672,
        broker_hosts=(),
        broker_username="guest",
        broker_password="guest",
        broker_password_file=None,
        broker_vhost="/",
        broker_heartbeat=30,
        authenticate=False,
        cleanup_script=None,
        receipt_key=None,
        download_public_key=None,
        checksum="md5",
        receipt_dir=state / "default-upload-receipts",
        receipt_keep_days=0.0,
        cleanup_attempts=1,
        cleanup_timeout=3600.0,
        free_percent=10.0,
        settle_seconds=1.0,
        max_transfers=4,
        bundle_files=0,
        bundle_min=50,
        bundle_file_kib=1024,
        bundle_mib=64,
        max_attempts=5,
        retry_max_seconds=300.0,
        log_format="text",
        daemon=False,
        log_file=None,
        metrics_listen=None,
        metrics_textfile=None,
        require_metadata={},
        layout="sidecar",
        subdir_per_upload=False,
        routes=(),
    )
    assert cfg.cleanup_argv == ()
    assert cfg.daemon_log == state / "default-upload.log"


def test_yaml_null_means_the_default(parse) -> None:
    cfg = parse(keep_minutes=None, rsync_opts=None, name=None, central_host=None)
    assert (cfg.keep_minutes, cfg.rsync_opts, cfg.name, cfg.central_host) == (
        30.0,
        (),
        "upload",
        "broker.example",
    )


def test_central_host_can_differ_from_the_broker_host(parse) -> None:
    cfg = parse(central_host="synkler@relay.example")
    assert cfg.synkler_server == "broker.example"
    assert cfg.central_host == "synkler@relay.example"


def test_key_table_and_config_fields_are_the_same_set() -> None:
    fields = [f.name for f in dataclasses.fields(Config) if f.name not in ("path", "given", "secret_files")]
    assert fields == list(KEYS)


# ---------------------------------------------------------------- derived paths


def test_derived_pidfile_and_state_db_differ_across_modes_with_the_same_id(parse) -> None:
    configs = [parse(mode=mode, id="relay1") for mode in ("upload", "central", "download")]
    assert len({c.pidfile for c in configs}) == 3
    assert len({c.state_db for c in configs}) == 3
    assert configs[1].pidfile.name == "relay1-central.pid"
    assert configs[1].state_db.name == "relay1-central.sqlite"


def test_a_name_other_than_the_mode_is_part_of_the_stem(parse) -> None:
    cfg = parse(mode="upload", id="relay1", name="lab2")
    assert cfg.stem == "relay1-upload-lab2"
    assert cfg.pidfile.name == "relay1-upload-lab2.pid"
    assert cfg.state_db.name == "relay1-upload-lab2.sqlite"


def test_every_role_may_be_named_and_peers_are_addressed_by_those_names(parse) -> None:
    central = parse(mode="central", name="hub-1", download_name="archive")
    assert (central.name, central.central_name, central.download_name) == ("hub-1", "hub-1", "archive")
    download = parse(mode="download", name="archive", central_name="hub-1")
    assert (download.central_name, download.download_name) == ("hub-1", "archive")
    upload = parse(name="lab-a", central_name="hub-1", download_name="archive")
    assert (upload.central_name, upload.download_name) == ("hub-1", "archive")
    assert parse(mode="central").download_name == "download" and parse().central_name == "central"


@pytest.mark.parametrize(
    ("keys", "key", "words"),
    [
        ({"name": "hub", "central_name": "hub"}, "name", "the name of the central agent, 'hub'"),
        ({"name": "central"}, "name", "the name of the central agent, 'central'"),
        ({"name": "arch", "download_name": "arch"}, "name", "the name of the download agent, 'arch'"),
        ({"central_name": "x", "download_name": "x"}, "download_name", "cannot both be named 'x'"),
        ({"mode": "central", "name": "download"}, "download_name", "cannot both be named 'download'"),
        ({"mode": "download", "name": "central"}, "central_name", "cannot both be named 'central'"),
    ],
)
def test_two_roles_cannot_share_a_name(parse, keys, key, words) -> None:
    err = error_of(parse, **keys)
    assert err.key == key and words in str(err), str(err)


def test_state_dir_follows_xdg_state_home(parse, tmp_path: Path) -> None:
    cfg = parse(environ={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert cfg.pidfile == tmp_path / "state" / "synkler" / "default-upload.pid"


def test_state_dir_follows_systemds_state_directory_first(parse, tmp_path: Path) -> None:
    # StateDirectory=synkler sets it; with several StateDirectory= names, the first one.
    environ = {
        "STATE_DIRECTORY": f"{tmp_path}/lib/synkler:{tmp_path}/lib/other",
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    cfg = parse(environ=environ)
    assert cfg.pidfile == tmp_path / "lib" / "synkler" / "default-upload.pid"
    assert cfg.state_db == tmp_path / "lib" / "synkler" / "default-upload.sqlite"
    assert cfg.daemon_log == tmp_path / "lib" / "synkler" / "default-upload.log"


def test_relative_state_directory_is_ignored(parse, home: Path) -> None:
    cfg = parse(environ={"STATE_DIRECTORY": "lib/synkler"})
    assert cfg.state_db == home / ".local" / "state" / "synkler" / "default-upload.sqlite"


def test_daemon_log_is_log_file_when_set(parse, home: Path) -> None:
    cfg = parse(log_file="~/log/agent.log", daemon=True)
    assert cfg.daemon and cfg.log_file == cfg.daemon_log == home / "log" / "agent.log"


def test_daemon_must_be_a_boolean(parse) -> None:
    with pytest.raises(ConfigError) as err:
        parse(daemon="yes please")
    assert err.value.key == "daemon" and "must be true or false" in str(err.value)


def test_relative_xdg_state_home_is_ignored(parse, home: Path) -> None:
    cfg = parse(environ={"XDG_STATE_HOME": "relative/state"})
    assert cfg.state_db == home / ".local" / "state" / "synkler" / "default-upload.sqlite"


def test_explicit_paths_get_tilde_expanded_against_home(parse, home: Path) -> None:
    (home / "out").mkdir()
    cfg = parse(pidfile="~/run/u.pid", state_db="~/db/u.sqlite", file_dir="~/out")
    assert cfg.pidfile == home / "run" / "u.pid"
    assert cfg.state_db == home / "db" / "u.sqlite"
    assert cfg.file_dir == home / "out"


def test_relative_paths_are_taken_from_the_config_files_directory(parse, conf_path: Path) -> None:
    (conf_path.parent / "data").mkdir(parents=True)
    cfg = parse(file_dir="data", pidfile="run/../u.pid")
    assert cfg.file_dir == conf_path.parent / "data"
    assert cfg.pidfile == conf_path.parent / "u.pid"
    assert cfg.file_dir.is_absolute() and cfg.pidfile.is_absolute()


# ---------------------------------------------------------------- search order


def test_explicit_path_wins_over_everything(tmp_path: Path, home: Path) -> None:
    explicit = write(tmp_path / "mine.conf", "")
    env = write(tmp_path / "env.conf", "")
    write(home / "synkler.conf", "")
    assert find_config(str(explicit), environ={"SYNKLER_CONF": str(env)}, home=home) == explicit


def test_synkler_conf_variable_wins_over_home_files(tmp_path: Path, home: Path) -> None:
    env = write(tmp_path / "env.conf", "")
    write(home / "synkler.conf", "")
    assert find_config(environ={"SYNKLER_CONF": str(env)}, home=home) == env


def test_home_file_comes_before_dot_config(home: Path) -> None:
    first = write(home / "synkler.conf", "")
    write(home / ".config" / "synkler" / "synkler.conf", "")
    assert find_config(environ={}, home=home) == first


def test_dot_config_comes_before_etc(home: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(config.load, "SYSTEM_CONFIG", write(tmp_path / "etc" / "synkler.conf", ""))
    second = write(home / ".config" / "synkler" / "synkler.conf", "")
    assert find_config(environ={}, home=home) == second


def test_etc_is_the_last_resort(home: Path, tmp_path: Path, monkeypatch) -> None:
    system = write(tmp_path / "etc" / "synkler.conf", "")
    monkeypatch.setattr(config.load, "SYSTEM_CONFIG", system)
    assert find_config(environ={"SYNKLER_CONF": ""}, home=home) == system


def test_nothing_found_lists_every_place_looked_in(home: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(config.load, "SYSTEM_CONFIG", tmp_path / "nowhere" / "synkler.conf")
    with pytest.raises(ConfigError) as info:
        find_config(environ={}, home=home)
    message = str(info.value)
    assert "no configuration file found (looked in:" in message
    assert str(home / "synkler.conf") in message
    assert str(home / ".config" / "synkler" / "synkler.conf") in message
    assert str(tmp_path / "nowhere" / "synkler.conf") in message


def test_explicit_missing_file_is_an_error_not_a_fallback(tmp_path: Path, home: Path) -> None:
    write(home / "synkler.conf", "")
    missing = str(tmp_path / "missing.conf")
    with pytest.raises(ConfigError) as info:
        find_config(missing, environ={}, home=home)
    assert str(info.value) == f"{missing}: no such file"
    assert info.value.exit_code == 2


def test_synkler_conf_variable_naming_a_missing_file_is_an_error(tmp_path: Path, home: Path) -> None:
    write(home / "synkler.conf", "")
    missing = str(tmp_path / "missing.conf")
    with pytest.raises(ConfigError) as info:
        find_config(environ={"SYNKLER_CONF": missing}, home=home)
    assert missing in str(info.value)
    assert "SYNKLER_CONF" in str(info.value)


def test_default_search_documents_the_order() -> None:
    assert config.DEFAULT_SEARCH == (
        "$SYNKLER_CONF",
        "~/synkler.conf",
        "~/.config/synkler/synkler.conf",
        "/etc/synkler.conf",
    )


def test_status_finds_the_database_the_unit_made_from_a_shell_without_its_environment(
    parse, home: Path, tmp_path: Path, monkeypatch
) -> None:
    from synkler.config import keys
    from synkler.config.places import find_state

    unit = tmp_path / "var" / "lib" / "synkler"
    monkeypatch.setattr(keys, "UNIT_STATE_DIR", unit)
    cfg = parse()  # a root shell: no $STATE_DIRECTORY
    place = find_state(cfg, environ={}, home=home)
    assert not place.found
    mine = home / ".local" / "state" / "synkler" / "default-upload.sqlite"
    assert place.looked == (mine, unit / "default-upload.sqlite")
    assert f"at {mine} nor {unit / 'default-upload.sqlite'}: has the agent run" in place.missing()

    unit.mkdir(parents=True)
    (unit / "default-upload.sqlite").touch()
    place = find_state(cfg, environ={}, home=home)
    assert place.cfg.state_db == unit / "default-upload.sqlite"
    assert place.cfg.pidfile == unit / "default-upload.pid"  # where the unit's agent holds it
    assert place.others == ()

    mine.parent.mkdir(parents=True)
    mine.touch()  # an agent once run by hand from this shell: its own place first, the other told
    place = find_state(cfg, environ={}, home=home)
    assert place.cfg.state_db == mine and place.others == (unit / "default-upload.sqlite",)


def test_a_state_db_set_in_the_configuration_is_the_only_place_looked_at(parse, tmp_path: Path) -> None:
    from synkler.config.places import find_state

    cfg = parse(state_db=str(tmp_path / "db.sqlite"))
    place = find_state(cfg, environ={}, home=tmp_path)
    assert place.looked == (tmp_path / "db.sqlite",) and not place.found
    assert "state_db in the configuration" not in place.missing()
