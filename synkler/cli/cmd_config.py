"""`synkler config migrate`: a synkler 0.0.x configuration (INI) printed or written as YAML (the
conversion itself is synkler.cli.migrate)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..config import config_from_text, read_yaml
from ..errors import ConfigError, ExitStatus, SynklerError
from ..text import shown
from .migrate import looks_like_ini, migrate


def cmd_config_migrate(args: argparse.Namespace) -> int:
    """Print or write the YAML equivalent of a synkler 0.0.x configuration."""
    old = Path(args.old)
    text = _read_old(old)
    if not looks_like_ini(text):
        try:
            data = read_yaml(text, old)
        except ConfigError:
            data = None
        if isinstance(data, dict):
            raise ConfigError(old, None, "already a YAML configuration: nothing to migrate")
    result = migrate(text, old)
    for warning in result.warnings:
        print(f"synkler: {shown(str(old))}: {shown(warning)}", file=sys.stderr)
    if args.output is None:
        sys.stdout.write(result.text)
        target = None
    else:
        target = Path(args.output)
        _write_new(target, result.text)
        print(f"synkler: wrote {shown(str(target))}; check it, then start the agent with -c", file=sys.stderr)
    try:  # the result must load (file_dir may live on another host: not looked at here)
        config_from_text(result.text, target or old, check_dirs=False)
    except ConfigError as e:
        print(f"synkler: the result does not load yet: {shown(e.problem)} ({e.key})", file=sys.stderr)
        return ExitStatus.CONFIG
    return ExitStatus.OK


def _read_old(old: Path) -> str:
    """The text of a 0.0.x file (which config.read_text would take for a broken synkler.conf)."""
    try:
        raw = old.read_bytes()
    except OSError as e:
        raise ConfigError(old, None, f"cannot read: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            old, None, "not UTF-8 text; save it as UTF-8 first, e.g. iconv -f latin1 -t utf-8 OLD > OLD.utf8"
        ) from None


def _write_new(path: Path, text: str) -> None:
    """Write a file that must not exist yet, whole or not at all."""
    if os.path.lexists(path):
        raise SynklerError(f"{path}: exists; choose another name or move it aside (it is never overwritten)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # unlike a rename, fails if the name was taken meanwhile
    except FileExistsError:
        raise SynklerError(f"{path}: exists; choose another name or move it aside") from None
    except OSError as e:
        raise SynklerError(f"{path}: cannot write: {e.strerror or e}") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
