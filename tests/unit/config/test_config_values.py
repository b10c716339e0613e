"""synkler.config: how values are read (numbers, rsync and its options, cleanup_script, rrsync_root,
require_metadata, download's layout), and sample-config as shipped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.configkit import REPO, SAMPLE, error_of, write

from synkler.config import KEYS, load_config
from synkler.errors import ConfigError

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
    unit.read(REPO / "systemd" / "synkler@.service")
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert Path(argv[0]).name == "synkler"
    args = build_parser().parse_args(argv[1:])
    assert args.config == "/etc/synkler/%i.conf" and args.command == "run"
    assert unit["Service"]["KillMode"] == "mixed"  # SIGTERM to the agent alone: it ends its rsyncs
