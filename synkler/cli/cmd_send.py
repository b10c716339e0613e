"""`synkler send [-m META.json] [-k KEY:VALUE ...] [--move] PATH...`: put data into upload's file_dir
together with its metadata (docs/metadata.md).

The metadata goes first, as the sidecar NAME.meta.json (written whole: a hidden temporary file,
renamed), then the data, copied under a hidden name in file_dir and renamed in (or, with --move,
renamed in from where it is, on the same file system). So upload never sees the data without
its metadata: a file renamed in is offered at once, with the sidecar that was there before it.

A PATH that is already an entry of file_dir (its name, or its path there) only gets its metadata
changed: the sidecar is rewritten with the keys given added (or replaced), and an entry central
refused for its metadata is offered again.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import uuid
from typing import TYPE_CHECKING, Any

from ..agents import sidecars
from ..errors import ConfigError, ExitStatus, SynklerError
from ..linux.fs import fsync_dir, remove_tree, rename_noreplace
from ..messages import name_problem
from ..metadata import Metadata, MetadataError, is_sidecar, merged, pair, parse, sidecar_of
from ..text import shown

if TYPE_CHECKING:
    from ..config import Config


class SendError(SynklerError):
    """What was given to `synkler send` cannot be used (nothing was placed)."""

    exit_code = ExitStatus.CONFIG


def cmd_send(cfg: Config, args: argparse.Namespace) -> int:
    if cfg.mode != "upload":
        raise SendError(f"send works on upload's file_dir; {cfg.path} is the {cfg.mode} agent's config")
    base = _from_file(args.meta) if args.meta else {}
    try:
        pairs = [pair(text) for text in args.key or []]
        meta = merged(base, pairs)
    except MetadataError as e:
        raise SendError(str(e)) from None
    file_dir = str(cfg.file_dir)
    status = ExitStatus.OK
    for path in args.paths:
        try:
            print(_send_one(file_dir, path, meta, move=args.move))
        except (SynklerError, OSError) as e:
            print(f"synkler: {shown(path)}: {shown(str(e))}", file=sys.stderr)
            status = max(status, e.exit_code if isinstance(e, SynklerError) else ExitStatus.FAILURE)
    return status


def _from_file(path: str) -> Metadata:
    try:
        with open(path, "rb") as f:
            return parse(f.read())
    except OSError as e:
        raise ConfigError(path, None, f"cannot read metadata: {e.strerror or e}") from None
    except MetadataError as e:
        raise ConfigError(path, None, str(e)) from None


def _entry_in(file_dir: str, path: str) -> str | None:
    """The entry of file_dir `path` names (its name alone, or a path to it there), or None."""
    if os.sep not in path and os.path.lexists(os.path.join(file_dir, path)):
        return path
    parent, name = os.path.split(os.path.abspath(path))
    if os.path.realpath(parent) == os.path.realpath(file_dir) and os.path.lexists(path):
        return name
    return None


def _send_one(file_dir: str, path: str, meta: Metadata, *, move: bool) -> str:
    existing = _entry_in(file_dir, path)
    if existing is not None:
        return _retag(file_dir, existing, meta)
    if not os.path.lexists(path):
        raise SendError("no such file or directory")
    name = os.path.basename(os.path.normpath(path))
    problem = name_problem(name) or ("its name is that of a sidecar" if is_sidecar(name) else None)
    if problem:
        raise SendError(f"cannot be an entry: {problem}")
    target = os.path.join(file_dir, name)
    if os.path.lexists(target):
        raise SendError(f"{shown(name)} is already in {file_dir}: send never replaces an entry")
    wrote = False
    if meta:
        try:
            sidecars.write(file_dir, name, meta, replace=False)
        except FileExistsError:
            raise SendError(
                f"{sidecar_of(name)} is already in {file_dir} (left from an earlier entry?): "
                "remove it, or send the data without -m/-k and then set its metadata"
            ) from None
        wrote = True
    try:
        _place(path, target, file_dir, move=move)
    except BaseException:
        if wrote:
            sidecars.remove(file_dir, name)
        raise
    how = "moved" if move else "copied"
    return f"{shown(name)}: {how} into {file_dir}" + (f" with {_keys(meta)}" if meta else "")


def _place(src: str, target: str, file_dir: str, *, move: bool) -> None:
    """The data into file_dir, appearing whole under its name (a rename, never over anything)."""
    if move:
        try:
            rename_noreplace(src, target)
        except OSError as e:
            if e.errno == 18:  # EXDEV
                raise SendError("--move works within one file system; without it, send copies") from None
            raise
        fsync_dir(file_dir)
        return
    tmp = os.path.join(file_dir, f".synkler-send-{uuid.uuid4().hex}")
    try:
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, tmp, symlinks=True)
        elif os.path.islink(src):
            os.symlink(os.readlink(src), tmp)
        else:
            shutil.copy2(src, tmp)
            _fsync(tmp)
        rename_noreplace(tmp, target)
    except BaseException:
        remove_tree(tmp)
        raise
    fsync_dir(file_dir)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _retag(file_dir: str, name: str, meta: Metadata) -> str:
    """Set the metadata of an entry already in file_dir: its sidecar, with the keys given added."""
    if not meta:
        raise SendError(f"{shown(name)} is already in {file_dir}: give -m or -k to set its metadata")
    current: Metadata = {}
    sidecar = os.path.join(file_dir, sidecar_of(name))
    if os.path.lexists(sidecar):
        try:
            current = sidecars.read(sidecar)
        except (OSError, MetadataError) as e:
            raise SendError(f"{sidecar_of(name)} cannot be read ({e}): fix or remove it first") from None
    try:
        new = merged(current, meta.items())
    except MetadataError as e:
        raise SendError(str(e)) from None
    sidecars.write(file_dir, name, new, replace=True)
    return f"{shown(name)}: metadata set ({_keys(new)})"


def _keys(meta: dict[str, Any]) -> str:
    return "metadata " + ", ".join(sorted(shown(k) for k in meta))
