"""Behaviour of synkler.config: finding, reading and checking synkler.conf."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from synkler import config
from synkler.config import KEYS, Config, find_config, load_config, parse_config
from synkler.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample-config"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def file_dir(tmp_path: Path) -> Path:
    path = tmp_path / "files"
    path.mkdir()
    return path


@pytest.fixture
def conf_path(tmp_path: Path) -> Path:
    return tmp_path / "etc" / "synkler.conf"


@pytest.fixture
def parse(file_dir: Path, home: Path, conf_path: Path):
    """parse_config on a minimal valid mapping updated with the given keys, hermetically."""

    def run(environ: dict | None = None, **keys: object) -> Config:
        data = {"mode": "upload", "file_dir": str(file_dir), "synkler_server": "broker.example"}
        data.update(keys)
        return parse_config(data, conf_path, environ=environ or {}, home=home)

    return run


def error_of(parse, **keys: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(**keys)
    return info.value


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


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
        bundle_files=1000,
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


# ---------------------------------------------------------------- file-level errors


def test_yaml_syntax_error_names_file_and_line_without_traceback(conf_path: Path) -> None:
    write(conf_path, "mode: upload\nfile_dir: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(conf_path, check_dirs=False)
    message = str(info.value)
    assert message.startswith(f"{conf_path}: invalid YAML at line ")
    assert "\n" not in message and "Traceback" not in message


def test_top_level_that_is_not_a_mapping_is_rejected(conf_path: Path) -> None:
    write(conf_path, "- mode: upload\n")
    with pytest.raises(ConfigError) as info:
        load_config(conf_path, check_dirs=False)
    assert str(info.value) == f"{conf_path}: must be a mapping of 'key: value' lines, got a list"


def test_empty_file_says_mode_is_required(conf_path: Path) -> None:
    write(conf_path, "# nothing yet\n")
    with pytest.raises(ConfigError) as info:
        load_config(conf_path, check_dirs=False)
    assert str(info.value) == f"{conf_path}: mode: is required"


def test_a_key_given_twice_names_both_lines(conf_path: Path) -> None:
    write(conf_path, "mode: upload\nid: a\nid: b\n")
    with pytest.raises(ConfigError) as info:
        load_config(conf_path, check_dirs=False)
    assert str(info.value) == f"{conf_path}: id: given twice (lines 2 and 3)"


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, check_dirs=False)
    assert str(info.value).startswith(f"{tmp_path}: cannot read:")


def test_load_config_reads_a_file(conf_path: Path, file_dir: Path, home: Path) -> None:
    write(conf_path, f"mode: central\nfile_dir: {file_dir}\nsynkler_server: mq.example\nkeep_minutes: 1.5\n")
    cfg = load_config(conf_path, environ={}, home=home)
    assert (cfg.path, cfg.mode, cfg.file_dir, cfg.keep_minutes) == (conf_path, "central", file_dir, 1.5)


# ---------------------------------------------------------------- key-level errors


def test_unknown_key_names_file_and_key_and_suggests_the_close_one(parse, conf_path: Path) -> None:
    err = error_of(parse, keep_minuts=5)
    assert str(err) == f"{conf_path}: keep_minuts: unknown key; did you mean 'keep_minutes'?"
    assert (err.path, err.key) == (str(conf_path), "keep_minuts")


def test_unknown_key_without_a_close_match_has_no_hint(parse, conf_path: Path) -> None:
    assert str(error_of(parse, colour="blue")) == f"{conf_path}: colour: unknown key"


def test_non_string_key_is_rejected(file_dir: Path, conf_path: Path) -> None:
    data = {"mode": "upload", "file_dir": str(file_dir), "synkler_server": "h", 42: "x"}
    with pytest.raises(ConfigError) as info:
        parse_config(data, conf_path, environ={})
    assert str(info.value) == f"{conf_path}: 42: keys must be strings"


@pytest.mark.parametrize("key", ["mode", "file_dir", "synkler_server"])
def test_missing_required_key_names_file_and_key(key: str, file_dir: Path, conf_path: Path) -> None:
    data = {"mode": "upload", "file_dir": str(file_dir), "synkler_server": "h"}
    del data[key]
    with pytest.raises(ConfigError) as info:
        parse_config(data, conf_path, environ={})
    assert str(info.value) == f"{conf_path}: {key}: is required"


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("mode", "uplaod", "must be one of upload, central, download, got 'uplaod'"),
        ("keep_minutes", "30", "must be a number, got '30'"),
        ("keep_minutes", True, "must be a number, got true"),
        ("keep_minutes", -1, "must be >= 0, got -1"),
        ("keep_minutes", float("inf"), "must be a finite number, got inf"),
        ("keep_history_days", -1, "must be >= 0, got -1"),
        ("keep_history_days", "30d", "must be a number, got '30d'"),
        ("max_transfers", 4.0, "must be an integer, got 4.0"),
        ("max_transfers", "4", "must be an integer, got '4'"),
        ("max_transfers", 0, "must be >= 1, got 0"),
        ("max_attempts", False, "must be an integer, got false"),
        ("rsync_timeout", 0, "must be >= 1, got 0"),
        ("stall_seconds", -1, "must be >= 0, got -1"),
        ("broker_port", 0, "must be between 1 and 65535, got 0"),
        ("broker_port", 70000, "must be between 1 and 65535, got 70000"),
        ("free_percent", 101, "must be between 0 and 100, got 101"),
        ("settle_seconds", -0.5, "must be >= 0, got -0.5"),
        ("retry_max_seconds", 0, "must be > 0, got 0"),
        ("broker_password", 1234, "must be a string, got 1234"),
        ("broker_username", "", "must not be empty"),
        ("broker_vhost", ["/"], "must be a string, got a list"),
        ("synkler_server", "-oProxyCommand=x", "must be a host name or user@host, got '-oProxyCommand=x'"),
        ("central_host", "user@host extra", "must be a host name or user@host, got 'user@host extra'"),
        ("rsync", "", "must not be empty"),
        ("rsync_opts", {"a": 1}, "must be a string, got a mapping"),
        ("rsync_opts", ["--ok", 3], "item 2 must be a non-empty string, got 3"),
        ("pidfile", 5, "must be a string, got 5"),
        ("cleanup_script", "  ", "must not be empty"),
    ],
)
def test_each_bad_value_names_file_key_and_problem(parse, conf_path: Path, key, value, problem) -> None:
    err = error_of(parse, **{key: value})
    assert str(err) == f"{conf_path}: {key}: {problem}"


def test_file_dir_that_does_not_exist_is_rejected(parse, tmp_path: Path, conf_path: Path) -> None:
    missing = tmp_path / "nope"
    err = error_of(parse, file_dir=str(missing))
    assert str(err) == f"{conf_path}: file_dir: directory does not exist: {missing}"


def test_file_dir_that_is_a_file_is_rejected(parse, tmp_path: Path, conf_path: Path) -> None:
    plain = write(tmp_path / "plain", "x")
    err = error_of(parse, file_dir=str(plain))
    assert str(err) == f"{conf_path}: file_dir: not a directory: {plain}"


def test_check_dirs_false_accepts_a_missing_file_dir(tmp_path: Path, conf_path: Path) -> None:
    data = {"mode": "download", "file_dir": str(tmp_path / "later"), "synkler_server": "h"}
    cfg = parse_config(data, conf_path, check_dirs=False, environ={})
    assert cfg.file_dir == tmp_path / "later"


# ---------------------------------------------------------------- id and name


@pytest.mark.parametrize("good", ["default", "relay-1", "a", "A_b.c-9", "_x", "x" * 64])
def test_id_and_name_accept_safe_identifiers(parse, good: str) -> None:
    cfg = parse(id=good, name=good)
    assert (cfg.id, cfg.name) == (good, good)


@pytest.mark.parametrize("bad", ["", ".hidden", "-x", "a/b", "a b", "x" * 65, "ünï", "a:b"])
@pytest.mark.parametrize("key", ["id", "name"])
def test_id_and_name_reject_unsafe_identifiers(parse, conf_path: Path, key: str, bad: str) -> None:
    err = error_of(parse, **{key: bad})
    assert str(err).startswith(f"{conf_path}: {key}: must be 1-64 letters, digits")


def test_id_given_as_a_number_is_rejected_rather_than_converted(parse) -> None:
    assert error_of(parse, id=7).problem == "must be a string, got 7"


# ---------------------------------------------------------------- numbers


def test_keep_minutes_accepts_fractions(parse) -> None:
    assert parse(keep_minutes=0.5).keep_minutes == 0.5


def test_keep_history_days_accepts_fractions_and_zero_keeps_everything(parse) -> None:
    assert parse(keep_history_days=0.5).keep_history_days == 0.5
    assert parse(keep_history_days=0).keep_history_days == 0.0


def test_whole_number_floats_become_floats(parse) -> None:
    cfg = parse(keep_minutes=5, free_percent=0, retry_max_seconds=1)
    assert isinstance(cfg.keep_minutes, float) and cfg.keep_minutes == 5.0
    assert isinstance(cfg.free_percent, float) and isinstance(cfg.retry_max_seconds, float)


def test_integer_keys_keep_integers(parse) -> None:
    cfg = parse(max_transfers=1, max_attempts=10, rsync_timeout=1, broker_port=65535)
    assert (cfg.max_transfers, cfg.max_attempts, cfg.rsync_timeout, cfg.broker_port) == (1, 10, 1, 65535)


# ---------------------------------------------------------------- rsync


def test_rsync_string_is_split_like_a_shell(parse) -> None:
    assert parse(rsync="/usr/bin/env rsync").rsync == ("/usr/bin/env", "rsync")
    assert parse(rsync="'/opt/my tools/rsync' -q").rsync == ("/opt/my tools/rsync", "-q")


def test_rsync_may_also_be_a_list(parse) -> None:
    assert parse(rsync=["/usr/bin/env", "rsync"]).rsync == ("/usr/bin/env", "rsync")


def test_rsync_with_an_unbalanced_quote_is_rejected(parse, conf_path: Path) -> None:
    err = error_of(parse, rsync="'rsync")
    assert str(err).startswith(f"{conf_path}: rsync: cannot be split into words")


def test_rsync_opts_comma_string_is_read_like_the_original(parse) -> None:
    cfg = parse(rsync_opts="--rsh=ssh -p 2222 -i key,--bwlimit=1000")
    assert cfg.rsync_opts == ("--rsh=ssh -p 2222 -i key", "--bwlimit=1000")


def test_rsync_opts_comma_string_allows_quoted_commas_and_ignores_blanks(parse) -> None:
    cfg = parse(rsync_opts='"--chmod=u=rw,go=r", --partial,')
    assert cfg.rsync_opts == ("--chmod=u=rw,go=r", "--partial")


def test_rsync_opts_empty_string_means_no_options(parse) -> None:
    assert parse(rsync_opts="").rsync_opts == ()


def test_rsync_opts_list_is_taken_item_for_item(parse) -> None:
    opts = ["--rsh=ssh -p 22 -i /home/synkler/.ssh/id_ed25519", "--bwlimit=1000"]
    assert parse(rsync_opts=opts).rsync_opts == tuple(opts)


# ---------------------------------------------------------------- cleanup_script


def test_cleanup_script_is_kept_as_written_and_split_on_demand(parse) -> None:
    cfg = parse(cleanup_script="/usr/local/bin/after --in '%F' --name %f")
    assert cfg.cleanup_script == "/usr/local/bin/after --in '%F' --name %f"
    assert cfg.cleanup_argv == ("/usr/local/bin/after", "--in", "%F", "--name", "%f")


def test_cleanup_script_that_cannot_be_split_fails_at_load_time(parse, conf_path: Path) -> None:
    err = error_of(parse, cleanup_script='run "%F')
    assert str(err).startswith(f"{conf_path}: cleanup_script: cannot be split into words")


# ---------------------------------------------------------------- the broker password


def test_the_broker_password_is_read_from_broker_password_file_without_its_newline(
    parse, tmp_path: Path, conf_path: Path
) -> None:
    secret = write(tmp_path / "secret", "s3cret pass\n")
    cfg = parse(broker_password_file=str(secret))
    assert cfg.broker_password == "s3cret pass"
    assert cfg.broker_password_file == secret
    assert cfg.secret_files == (secret,)


def test_broker_password_file_is_relative_to_the_config_file(parse, conf_path: Path) -> None:
    write(conf_path.parent / "pw", "x\r\n")
    cfg = parse(broker_password_file="pw")
    assert (cfg.broker_password, cfg.broker_password_file) == ("x", conf_path.parent / "pw")


def test_broker_password_and_broker_password_file_together_are_an_error(parse, tmp_path, conf_path) -> None:
    secret = write(tmp_path / "secret", "s3cret\n")
    err = error_of(parse, broker_password="other", broker_password_file=str(secret))
    assert str(err) == (
        f"{conf_path}: broker_password_file: give broker_password or broker_password_file, not both"
    )


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "cannot read (No such file or directory)"),
        ("", "empty"),
        ("\n", "empty"),
        ("one\ntwo\n", "holds more than one line (the password must be its only line)"),
        (b"caf\xe9", "not UTF-8 text"),
        ("x" * 5000, "longer than 4096 bytes, so not a password file"),
        ("dir", "not a regular file"),
    ],
)
def test_a_broker_password_file_that_will_not_do_is_an_error_naming_it(
    parse, tmp_path: Path, conf_path: Path, content, problem: str
) -> None:
    secret = tmp_path / "secret"
    if content == "dir":
        secret.mkdir()
    elif isinstance(content, bytes):
        secret.write_bytes(content)
    elif content is not None:
        secret.write_text(content)
    err = error_of(parse, broker_password_file=str(secret))
    assert str(err) == f"{conf_path}: broker_password_file: {problem}: {secret}"


def test_the_environment_gives_the_password_when_the_file_names_none(parse) -> None:
    cfg = parse(environ={"SYNKLER_BROKER_PASSWORD": "from-env"})
    assert cfg.broker_password == "from-env"
    assert cfg.secret_files == ()
    assert parse(environ={"SYNKLER_BROKER_PASSWORD": ""}).broker_password == "guest"


def test_a_password_in_the_file_comes_before_the_environment(parse, tmp_path: Path) -> None:
    env = {"SYNKLER_BROKER_PASSWORD": "from-env"}
    assert parse(environ=env, broker_password="written").broker_password == "written"
    secret = write(tmp_path / "secret", "from-file\n")
    assert parse(environ=env, broker_password_file=str(secret)).broker_password == "from-file"


def test_the_config_file_is_a_secret_file_only_when_it_holds_a_password_other_than_guest(
    parse, conf_path: Path
) -> None:
    assert parse(broker_password="s3cret").secret_files == (conf_path,)
    assert parse(broker_password="guest").secret_files == ()
    assert parse().secret_files == ()


# ---------------------------------------------------------------- sample-config


def test_sample_config_loads_as_shipped(home: Path) -> None:
    cfg = load_config(SAMPLE, check_dirs=False, environ={}, home=home)
    assert cfg.mode == "upload"
    assert cfg.file_dir == Path("/srv/synkler/outgoing")
    assert cfg.synkler_server == "central.example.org"


def test_sample_config_documents_every_key() -> None:
    text = SAMPLE.read_text()
    for key in KEYS:
        assert re.search(rf"^#?{key}:", text, re.MULTILINE), f"{key} missing from sample-config"


def test_sample_config_examples_are_valid_when_uncommented(tmp_path: Path, home: Path) -> None:
    text = re.sub(r"^#(?=[a-z_]+:)", "", SAMPLE.read_text(), flags=re.MULTILINE)
    uncommented = write(tmp_path / "synkler.conf", text)
    cfg = load_config(uncommented, check_dirs=False, environ={}, home=home)
    assert cfg.rsync_opts == ("--rsh=ssh -p 22 -i /var/lib/synkler/.ssh/id_ed25519",)
    assert cfg.cleanup_argv == ("/usr/local/bin/process-delivery", "--input", "%F")
    assert cfg.central_host == "synkler@central.example.org"
    assert cfg.pidfile == home / ".local" / "state" / "synkler" / "default-upload.pid"


def test_the_systemd_unit_runs_a_command_line_the_cli_accepts():
    import configparser
    import shlex

    from synkler.cli.parser import build_parser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(Path(__file__).parents[2] / "systemd" / "synkler@.service")
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert Path(argv[0]).name == "synkler"
    args = build_parser().parse_args(argv[1:])
    assert args.config == "/etc/synkler/%i.conf" and args.command == "run"
    assert unit["Service"]["KillMode"] == "mixed"  # SIGTERM to the agent alone: it ends its rsyncs


# ---------------------------------------------------------------- people coming from synkler 0.0.x


def test_a_file_that_is_not_utf8_says_where_and_how_to_convert_it(conf_path: Path) -> None:
    conf_path.parent.mkdir(parents=True)
    conf_path.write_bytes(b"mode: upload\n# Gr\xfc\xdfe\n")
    with pytest.raises(ConfigError) as info:
        load_config(conf_path)
    assert "not UTF-8 text (byte 0xfc at line 2, column 5)" in info.value.problem
    assert "iconv -f latin1 -t utf-8" in info.value.problem


def test_a_tab_in_the_indentation_says_yaml_takes_spaces(conf_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(conf_path, "mode: upload\nrsync_opts:\n\t- --x\n"))
    assert "line 3" in info.value.problem and "use spaces" in info.value.problem


def test_a_colon_without_a_space_says_to_add_one(conf_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(conf_path, "mode:upload\nfile_dir:/x\n"))
    assert "space after each colon" in info.value.problem


@pytest.mark.parametrize(
    "text, line, written",
    [
        ("mode:central\n", 1, "mode:central"),
        ("mode:central\nid: lab\n", 1, "mode:central"),  # PyYAML stumbles at line 2
        ("mode: central\nid:lab\nfile_dir: /x\n", 2, "id:lab"),
        ("mode: upload\nrsync_opts:\n  - -v\nsynkler_server:mq.lab\n", 4, "synkler_server:mq.lab"),
    ],
    ids=["one-line", "first-of-two", "middle", "last"],
)
def test_a_colon_without_a_space_is_named_at_its_own_line_with_the_fix(
    conf_path: Path, text: str, line: int, written: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(conf_path, text), check_dirs=False)
    assert info.value.key is None
    problem = info.value.problem
    assert problem.startswith("must be 'key: value' lines, with a space after each colon: ")
    assert f"line {line} reads '{written}'" in problem
    key, value = written.split(":", 1)
    assert f"(write '{key}: {value}')" in problem


def test_a_nested_setting_without_a_space_after_the_colon_says_to_add_one(parse) -> None:
    err = error_of(parse, alerts={"webhook": "url:https://hooks.example/x"})
    assert err.key == "alerts.webhook"
    assert err.problem == (
        "must be a mapping of 'key: value' lines, with a space after each colon, "
        "got 'url:https://hooks.example/x'"
    )


def test_other_yaml_errors_keep_the_parsers_line(conf_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(conf_path, "mode: upload\nurl: http://x\nfile_dir: [unclosed\n"), check_dirs=False)
    assert info.value.problem.startswith("invalid YAML at line 4")


def test_a_key_in_capitals_hints_at_the_lower_case_one(parse) -> None:
    assert error_of(parse, KEEP_MINUTES=5).problem == "unknown key; did you mean 'keep_minutes'?"


def test_log_format_is_text_or_json(parse) -> None:
    assert parse().log_format == "text"
    assert parse(log_format="json").log_format == "json"
    assert error_of(parse, log_format="xml").key == "log_format"


# ---------------------------------------------------------------- TLS to the broker


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    from support import tlscerts

    why = tlscerts.available()
    if why is not None:
        pytest.skip(why)
    ca = tlscerts.CertAuthority(tmp_path_factory.mktemp("ca"))
    cert, key = ca.issue("client", "upload@lab", client=True)
    other_cert, other_key = ca.issue("other", "someone", client=True)
    return {"ca": ca.cert, "cert": cert, "key": key, "other_key": other_key}


def test_tls_makes_the_port_5671_unless_one_is_given(parse, certs) -> None:
    assert parse(broker_tls=True, broker_ca_file=str(certs["ca"])).broker_port == 5671
    assert parse(broker_tls=True, broker_port=5999).broker_port == 5999
    assert parse().broker_port == 5672


def test_tls_settings_are_read(parse, certs) -> None:
    cfg = parse(
        broker_tls=True,
        broker_ca_file=str(certs["ca"]),
        broker_cert_file=str(certs["cert"]),
        broker_key_file=str(certs["key"]),
        broker_login="external",
        broker_tls_server_name="rabbit.example",
    )
    assert (cfg.broker_ca_file, cfg.broker_cert_file, cfg.broker_key_file) == (
        certs["ca"],
        certs["cert"],
        certs["key"],
    )
    assert (cfg.broker_login, cfg.broker_tls_server_name) == ("external", "rabbit.example")
    assert cfg.broker_username == ""  # the broker takes the user from the certificate


@pytest.mark.parametrize(
    "keys, key, problem",
    [
        ({"broker_ca_file": "ca"}, "broker_ca_file", "is set but broker_tls is not true"),
        ({"broker_tls_server_name": "x.example"}, "broker_tls_server_name", "is set but broker_tls"),
        ({"broker_login": "external"}, "broker_login", "external needs broker_tls: true"),
        (
            {"broker_tls": True, "broker_cert_file": "cert"},
            "broker_key_file",
            "is required with broker_cert_file",
        ),
        (
            {"broker_tls": True, "broker_key_file": "key"},
            "broker_cert_file",
            "is required with broker_key_file",
        ),
        (
            {"broker_tls": True, "broker_login": "external"},
            "broker_login",
            "external needs a client certificate",
        ),
        (
            {"broker_tls": True, "broker_login": "certificate"},
            "broker_login",
            "must be one of password, external",
        ),
    ],
)
def test_tls_settings_that_do_not_fit_together_are_refused(parse, certs, keys, key, problem) -> None:
    names = {"ca": certs["ca"], "cert": certs["cert"], "key": certs["key"]}
    keys = {
        k: str(names.get(v, v)) if isinstance(v, str) and k.endswith("_file") else v for k, v in keys.items()
    }
    err = error_of(parse, **keys)
    assert err.key == key
    assert problem in err.problem


def test_a_tls_file_that_is_missing_unreadable_or_wrong_is_refused_naming_key_and_file(
    parse, certs, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.pem"
    err = error_of(parse, broker_tls=True, broker_ca_file=str(missing))
    assert (err.key, err.problem) == ("broker_ca_file", f"file does not exist: {missing}")
    garbage = write(tmp_path / "garbage.pem", "not a certificate\n")
    err = error_of(parse, broker_tls=True, broker_ca_file=str(garbage))
    assert (err.key, err.problem) == ("broker_ca_file", f"no PEM certificate in {garbage}")
    err = error_of(
        parse, broker_tls=True, broker_cert_file=str(certs["key"]), broker_key_file=str(certs["key"])
    )
    assert (err.key, err.problem) == ("broker_cert_file", f"no PEM certificate in {certs['key']}")
    err = error_of(
        parse, broker_tls=True, broker_cert_file=str(certs["cert"]), broker_key_file=str(certs["other_key"])
    )
    assert err.key == "broker_key_file"
    assert err.problem == f"{certs['other_key']} is not the key of the certificate {certs['cert']}"


def test_an_encrypted_client_key_is_refused_without_asking_for_a_passphrase(parse, certs, tmp_path) -> None:
    import subprocess

    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", certs["key"], "-aes256", "-passout", "pass:x", "-out", encrypted],
        check=True,
    )
    err = error_of(
        parse, broker_tls=True, broker_cert_file=str(certs["cert"]), broker_key_file=str(encrypted)
    )
    assert (err.key, err.problem) == (
        "broker_key_file",
        f"{encrypted} is encrypted: synkler needs a key without a passphrase",
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_key_file_is_refused(parse, certs, tmp_path) -> None:
    key = tmp_path / "locked.key"
    key.write_bytes(certs["key"].read_bytes())
    key.chmod(0)
    err = error_of(parse, broker_tls=True, broker_cert_file=str(certs["cert"]), broker_key_file=str(key))
    assert (err.key, err.problem) == ("broker_key_file", f"cannot read {key}: Permission denied")


def test_external_login_with_authenticate_needs_the_agent_user_named(parse, certs) -> None:
    tls = {
        "broker_tls": True,
        "broker_cert_file": str(certs["cert"]),
        "broker_key_file": str(certs["key"]),
        "broker_login": "external",
        "authenticate": True,
        "id": "lab",
    }
    err = error_of(parse, **tls)
    assert err.key == "broker_username" and "'upload@lab'" in err.problem
    assert parse(**tls, broker_username="upload@lab").broker_username == "upload@lab"


@pytest.mark.parametrize("opt", ["--old-args", "--no-protect-args", "--no-secluded-args", "--no-s"])
def test_an_rsync_option_that_hands_paths_to_centrals_shell_is_refused_naming_the_file_and_key(
    parse, opt
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(rsync_opts=["--bwlimit=100", opt])
    assert caught.value.key == "rsync_opts" and opt in str(caught.value)
    assert "synkler.conf" in str(caught.value)


@pytest.mark.parametrize("root", ["srv/lab", "/srv/../lab", "/srv//lab", "/srv/lab x", "/"])
def test_an_rrsync_root_must_be_an_absolute_directory_spelled_one_way(parse, root) -> None:
    with pytest.raises(ConfigError, match="rrsync_root"):
        parse(rrsync_root=root)


def test_an_rrsync_root_is_kept_without_its_trailing_slash(parse) -> None:
    assert parse(rrsync_root="/srv/synkler/lab/").rrsync_root == "/srv/synkler/lab"


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


def test_require_metadata_takes_patterns_or_null_and_a_list_of_keys(parse) -> None:
    cfg = parse(mode="central", require_metadata={"sample_id": "^S[0-9]+$", "project": None})
    assert cfg.require_metadata["project"] is None
    assert cfg.require_metadata["sample_id"].pattern == "^S[0-9]+$"
    assert list(parse(mode="central", require_metadata=["a", "b"]).require_metadata) == ["a", "b"]


def test_a_bad_pattern_in_require_metadata_names_the_file_and_the_key(parse) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(mode="central", require_metadata={"sample_id": "^S[0-9+$"})
    assert caught.value.key == "require_metadata.sample_id"
    assert "regular expression" in str(caught.value)
    assert caught.value.exit_code == 2 and str(caught.value.path).endswith(".conf")


def test_subdir_per_upload_is_off_unless_set_and_a_bad_value_names_the_file_and_the_key(parse) -> None:
    assert parse(mode="download").subdir_per_upload is False
    assert parse(mode="download", subdir_per_upload=True).subdir_per_upload is True
    with pytest.raises(ConfigError) as caught:
        parse(mode="download", subdir_per_upload="yes")
    assert caught.value.key == "subdir_per_upload"
    assert "must be true or false" in str(caught.value) and str(caught.value.path).endswith(".conf")


def test_layout_is_sidecar_or_bagit(parse) -> None:
    assert parse(mode="download").layout == "sidecar"
    assert parse(mode="download", layout="bagit").layout == "bagit"
    with pytest.raises(ConfigError) as caught:
        parse(mode="download", layout="zip")
    assert caught.value.key == "layout"
