"""synkler.config: a file or a key that will not do is an error naming the file, the key and what
is wrong, with a hint for people coming from synkler 0.0.x."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.configkit import error_of, write

from synkler.config import load_config, parse_config
from synkler.errors import ConfigError

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
