"""`synkler config migrate`: a synkler 0.0.x INI file becomes YAML that loads and means the same."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from synkler.cli.migrate import load, migrate
from synkler.config import load_config
from synkler.errors import ConfigError
from synkler.hops.cleanup import cleanup_argv

# The original synkler's sample-config (0.0.3), with its comments, as people copied it.
SAMPLE_0_0 = """
[default]
# Directory where the files live. Required.
file_dir = {file_dir}

# How long to keep a file on the central server after the transfer is complete, in minutes.
keep_minutes = 30

# 'upload', 'central', or 'download'. Required.
mode = central

# Temporary location where synkler can store the id of the currently running process (thus
#   preventing multiple processes from using this configuration simultaneously).
pidfile = /tmp/synkler.pid

# location of the system's rsync command. Required.
rsync = /usr/bin/env rsync

# Additional options to pass to rsync, if necessary.  Separate multiple
#   values by commas.
rsync_opts = --rsh=/usr/bin/ssh

# The rabbitmq server. Required
synkler_server = rabbitmq.example.com

# command to run on the 'upload' or 'download' servers after a transfer is completed.
# options:
#   %f - name of the completed file
#   %F - full path of the completed file
#
# Options are automatically enclosed in quotes.
cleanup_script = mv %F /home/user/downloads
"""


@pytest.fixture
def file_dir(tmp_path: Path) -> Path:
    path = tmp_path / "files"
    path.mkdir()
    return path


def comments(text: str) -> str:
    """The comment lines of `text` as one line (notes are wrapped)."""
    return " ".join(line[2:] for line in text.splitlines() if line.startswith("# "))


def converted(tmp_path: Path, text: str, **fmt: object):
    """(the YAML path, its Config, the migration) for 0.0.x `text`."""
    old = tmp_path / "synkler.conf.0.0"
    old.write_text(text.format(**fmt))
    result = migrate(old.read_text(), old)
    new = tmp_path / "synkler.conf"
    new.write_text(result.text)
    return new, load_config(new, environ={}, home=tmp_path), result


def test_the_0_0_x_sample_config_becomes_yaml_that_loads_with_the_same_settings(tmp_path, file_dir):
    new, cfg, result = converted(tmp_path, SAMPLE_0_0, file_dir=file_dir)
    assert result.warnings == []
    assert (cfg.mode, cfg.file_dir, cfg.keep_minutes) == ("central", file_dir, 30)
    # 0.0.x's shared /tmp/synkler.pid is left out: each agent gets its own beside its state database.
    assert cfg.pidfile == cfg.state_db.with_suffix(".pid") != Path("/tmp/synkler.pid")
    assert "\n#pidfile: /tmp/synkler.pid\n" in new.read_text()
    assert "three agents on one host must not share one" in comments(new.read_text())
    assert cfg.rsync == ("/usr/bin/env", "rsync")
    assert cfg.rsync_opts == ("--rsh=/usr/bin/ssh",)
    assert (cfg.synkler_server, cfg.central_host) == ("rabbitmq.example.com", "rabbitmq.example.com")
    assert cfg.cleanup_argv == ("mv", "%F", "/home/user/downloads")
    assert (cfg.id, cfg.name) == ("default", "central")  # 0.0.x's id was always "default"


def test_the_yaml_says_what_changed_in_meaning(tmp_path, file_dir):
    new, _, _ = converted(tmp_path, SAMPLE_0_0, file_dir=file_dir)
    text = new.read_text()
    notes = comments(text)
    assert "synkler 0.0.x" in notes and "docs/upgrading.md" in notes
    assert "counted from the confirmed delivery" in notes  # keep_minutes
    assert "file_dir/<id>/staging" in notes  # central's layout
    head, _, _ = text.partition("keep_minutes:")
    assert "modification" in head.rsplit("\n\n", 1)[-1]  # the comment stands right above its key


def _old_argv(script: str, name: str, path: str) -> list[str]:
    """What synkler 0.0.x ran: split at each space, a word that is exactly %f or %F replaced."""
    return [name if w == "%f" else path if w == "%F" else w for w in script.split(" ")]


@pytest.mark.parametrize(
    "script",
    [
        "mv %F /srv/done",
        "/usr/local/bin/ingest --input %F --name %f",
        'sh -c "gzip $1" %F',  # 0.0.x took the quotes as part of the words
        "echo 100% done %f",  # a lone % was literal
        "cp  %F /two  spaces",  # two spaces made an empty argument
        "mv %F /dir/with'quote",
        "touch /done/%f.flag",  # %f inside a word was never replaced by 0.0.x
    ],
)
def test_a_cleanup_script_runs_the_same_argv_as_it_did_in_0_0_x(tmp_path, file_dir, script):
    text = f"[default]\nmode = upload\nfile_dir = {file_dir}\nsynkler_server = h\ncleanup_script = {script}\n"
    _, cfg, result = converted(tmp_path, text)
    name, path = "my file;$(x).csv", f"{file_dir}/my file;$(x).csv"
    assert cleanup_argv(cfg.cleanup_argv, name, path) == _old_argv(script, name, path)
    if "%f." in script:
        assert any("cleanup_script" in w and "check" in w for w in result.warnings)


def test_rsync_opts_become_a_list_without_the_spaces_0_0_x_passed_to_rsync(tmp_path, file_dir):
    opts = '--rsh=ssh -p 2222 -i /k, --bwlimit=1000,"--filter=- a,b"'
    text = f"[default]\nmode = download\nfile_dir = {file_dir}\nsynkler_server = h\nrsync_opts = {opts}\n"
    new, cfg, _ = converted(tmp_path, text)
    old = list(csv.reader([opts]))[0]
    assert cfg.rsync_opts == tuple(o.strip() for o in old)
    assert yaml.safe_load(new.read_text())["rsync_opts"] == list(cfg.rsync_opts)
    assert "took them for file names" in comments(new.read_text())


def test_a_missing_mode_is_central_as_0_0_x_had_it(tmp_path, file_dir):
    new, cfg, _ = converted(tmp_path, f"[default]\nfile_dir = {file_dir}\nsynkler_server = h\n")
    assert cfg.mode == "central"
    assert "then ran as central" in comments(new.read_text())
    assert cfg.keep_minutes == 30  # its default then, written out for central


def test_numbers_stay_numbers_and_strings_stay_strings(tmp_path, file_dir):
    text = (
        f"[default]\nmode = central\nfile_dir = {file_dir}\nsynkler_server = h\n"
        "keep_minutes = 0.5\nfree_percent = 15\nbroker_password = 12345\n"
    )
    _, cfg, _ = converted(tmp_path, text)
    assert (cfg.keep_minutes, cfg.free_percent, cfg.broker_password) == (0.5, 15, "12345")


def test_an_unknown_key_is_left_out_commented_with_a_warning(tmp_path, file_dir):
    text = f"[default]\nmode = upload\nfile_dir = {file_dir}\nsynkler_server = h\ncolour = blue\n"
    new, _, result = converted(tmp_path, text)
    assert "#colour: blue" in new.read_text()
    assert any(w.startswith("colour:") for w in result.warnings)


def test_a_bad_value_is_copied_with_a_warning_and_then_named_by_the_loader(tmp_path, file_dir):
    old = tmp_path / "old.conf"
    old.write_text(
        f"[default]\nmode = central\nfile_dir = {file_dir}\nsynkler_server = h\nkeep_minutes = 30 # half\n"
    )
    result = migrate(old.read_text(), old)
    assert any(w.startswith("keep_minutes: must be a number") for w in result.warnings)
    new = tmp_path / "new.conf"
    new.write_text(result.text)
    with pytest.raises(ConfigError) as info:
        load_config(new)
    assert info.value.key == "keep_minutes"


def test_key_value_lines_without_a_section_are_read_as_the_default_section(tmp_path, file_dir):
    _, cfg, _ = converted(tmp_path, f"mode = upload\nfile_dir = {file_dir}\nsynkler_server = h\n")
    assert cfg.mode == "upload"


def test_a_file_without_a_default_section_is_refused_naming_what_it_has(tmp_path):
    with pytest.raises(ConfigError) as info:
        migrate("[upload]\nmode = upload\n", tmp_path / "x.conf")
    assert "no [default] section" in info.value.problem and "[upload]" in info.value.problem


# ---------------------------------------------------------------- a 0.0.x file given to the agent


@pytest.mark.parametrize(
    "text",
    [
        "[default]\nmode = upload\nfile_dir = /x\nsynkler_server = h\n",
        "[default]\nmode: upload\n",  # INI allows ':' too
        "[default]\n",
        "mode = upload\nfile_dir = /x\n",  # no section: still the INI habit
        "# synkler\nkeep_minutes=30\n",
    ],
    ids=["section", "colons", "only-section", "no-section", "no-spaces"],
)
def test_an_ini_file_says_to_run_config_migrate(tmp_path: Path, text: str) -> None:
    conf_path = tmp_path / "synkler.conf"
    conf_path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(conf_path)
    assert info.value.key is None
    assert "synkler 0.0.x" in info.value.problem
    assert f"synkler config migrate {conf_path} -o " in info.value.problem
