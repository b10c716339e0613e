"""What upload's scan of file_dir finds: each entry's fingerprint (with its sidecar's), which entries
are whole already, their metadata; and the md5 of entries (on workers, for synkler.agents.upload).

A sidecar (``NAME.meta.json``, synkler.metadata) is no entry of its own: its fingerprint joins its
entry's, so writing, changing or removing it is a change of the entry (which settles again, and
is offered again if central refused it for its metadata).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Callable, Union

from ..hops.checksum import EntryStat, FileDigest, digest_entry, file_stat, stat_entry
from ..linux.fs import written_or_stat
from ..metadata import MetadataError, entry_of, is_sidecar, sidecar_of
from . import sidecars
from .sidecars import Read, Sidecars

log = logging.getLogger("synkler")


@dataclass(frozen=True)
class Hashed:
    """An entry read whole: its md5, and its fingerprint taken after the read (with its sidecar's,
    see with_sidecar), its metadata, and its second hash."""

    md5: str
    stat: EntryStat
    meta: Read | None = None
    checksum: str = ""  # the second hash (`checksum:`), `<alg>:<hex>`, from the same read; "": none
    files: tuple[FileDigest, ...] = ()  # each file's digests (a bundle keeps its members' md5s)


Found = Union[EntryStat, Exception, None]  # None: vanished while looked at


@dataclass(frozen=True)
class Listing:
    """What a look at file_dir found: each entry's fingerprint (or why it has none), and which
    entries are whole already (renamed in, not open for writing). `looked`: the names looked at
    (None: the whole directory was listed); a name looked at and not found is gone."""

    found: dict[str, Found]
    whole: set[str]
    meta: dict[str, Read] = field(default_factory=dict)  # the entries that have a sidecar
    looked: frozenset[str] | None = None


def with_sidecar(st: EntryStat, sidecar: str | None) -> EntryStat:
    """An entry's fingerprint with its sidecar's: a sidecar written, changed or removed is a change."""
    return st if sidecar is None else replace(st, signature=f"{st.signature}+{sidecar}")


def data_signature(signature: str | None) -> str | None:
    """The fingerprint of an entry's data alone (what the cleanup script's check compares)."""
    return None if signature is None else signature.partition("+")[0]


def _sidecar_stamp(file_dir: str, name: str) -> str | None:
    try:
        return sidecars.stamp(os.lstat(os.path.join(file_dir, sidecar_of(name))))
    except OSError as e:
        if sidecars.none_there(e):
            return None
        raise


def scan(
    file_dir: str,
    take_renamed: Callable[[], set[str]],
    cache: Sidecars | None = None,
    names: Collection[str] | None = None,
    take_sidecars: Callable[[], set[str] | None] | None = None,
) -> Listing:
    """Fingerprint every entry of file_dir, or with `names` those only (names of sidecars stand for
    their entries; dot names are skipped; the files renamed in are looked at too); also say which
    are whole already: files renamed in (nothing happened to them since) that no process holds
    open for writing. Sidecars (NAME.meta.json) are no entries: their fingerprints join their
    entries', and their metadata is read (`cache`: again only when they change).

    `take_sidecars`: the entries whose sidecars events told of since it was last called, None if
    events were lost (the watcher's; with a `cache`): the file system is then asked for the sidecars
    only of those and of the entries the last whole listing found one for (`cache.may_have`), not
    for every name looked at (nearly all have none)."""
    renamed = take_renamed()
    cache = cache or Sidecars(file_dir)
    # After take_renamed: the sidecar of a file renamed in, written before it, is among those told.
    told = None if take_sidecars is None else take_sidecars()
    whole: set[str] = set()
    if names is None:
        found, stamps = _list_all(file_dir, renamed, whole)
        cache.listed(stamps, told)
        looked = None
        # A listing is no snapshot: a file renamed in just after its sidecar (`synkler send`) may be
        # listed without it. Look for the sidecars of those offered at once.
        for name in whole:
            if name not in stamps:
                _look_for_sidecar(file_dir, name, cache, stamps)
    else:
        looked = frozenset(entry_of(n) if is_sidecar(n) else n for n in (*names, *renamed))
        looked = frozenset(n for n in looked if not n.startswith("."))
        cache.told(told)
        found, stamps = _list_some(file_dir, looked, renamed, whole, cache)
    stamps = {name: s for name, s in stamps.items() if isinstance(found.get(name), EntryStat)}
    for name, sidecar in stamps.items():
        st = found[name]
        assert isinstance(st, EntryStat)
        found[name] = with_sidecar(st, sidecar)
    meta = cache.look(stamps, among=looked)
    return Listing(found, whole, meta, looked)


def _list_all(file_dir: str, renamed: set[str], whole: set[str]) -> tuple[dict[str, Found], dict[str, str]]:
    """Every entry of file_dir fingerprinted (those found whole added to `whole`), and the
    fingerprints of the sidecars listed, by entry name."""
    found: dict[str, Found] = {}
    stamps: dict[str, str] = {}  # entry name -> its sidecar's fingerprint
    with os.scandir(file_dir) as it:
        for d in it:
            if d.name.startswith("."):
                continue
            if is_sidecar(d.name):
                try:
                    stamps[entry_of(d.name)] = sidecars.stamp(d.stat(follow_symlinks=False))
                except FileNotFoundError:
                    pass
                continue
            try:
                found[d.name] = _look_at(d.path, d.name, d.name in renamed, whole)
            except FileNotFoundError:  # vanished while we looked
                found[d.name] = None
            except (OSError, ValueError) as e:  # unreadable, or holds a fifo/socket/device
                found[d.name] = e
    return found, stamps


def _list_some(
    file_dir: str, names: Collection[str], renamed: set[str], whole: set[str], cache: Sidecars
) -> tuple[dict[str, Found], dict[str, str]]:
    """These entries of file_dir fingerprinted, with their sidecars' fingerprints (asked for only
    where one may be: `cache.may_have`); one that is not there is left out (gone)."""
    found: dict[str, Found] = {}
    stamps: dict[str, str] = {}
    for name in names:
        path = os.path.join(file_dir, name)
        try:
            found[name] = _look_at(path, name, name in renamed, whole)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            found[name] = e
            continue
        _look_for_sidecar(file_dir, name, cache, stamps)
    return found, stamps


def _look_for_sidecar(file_dir: str, name: str, cache: Sidecars, stamps: dict[str, str]) -> None:
    """The fingerprint of the sidecar of `name` into `stamps`, if it may have one and has."""
    if not cache.may_have(name):
        return
    sidecar = _sidecar_stamp(file_dir, name)
    if sidecar is None:
        cache.none_for(name)
    else:
        stamps[name] = sidecar


def _look_at(path: str, name: str, renamed: bool, whole: set[str]) -> EntryStat:
    """One entry's fingerprint; a file renamed in that no process holds open for writing is added
    to `whole` (its fingerprint taken under the lease that says so: that of the whole file, and
    the same as stat_entry's, with one lstat less)."""
    if not renamed:
        return stat_entry(path)
    writing, st = written_or_stat(path)
    if st is not None:
        whole.add(name)
        return file_stat(st)
    why = "is still open for writing" if writing else "may still be written"
    log.debug("%s: renamed in, but %s: it settles first", name, why)
    return stat_entry(path)


def hash_entry(path: str, strong: str | None = None, files: bool = False) -> Hashed:
    """md5 of an entry (and its second hash `strong`, in the same read), its fingerprint after the
    read (with its sidecar's) and its metadata; with `files`, each file's digests too."""
    digest = digest_entry(path, strong)
    directory, name = os.path.split(path)
    before = _sidecar_stamp(directory, name)
    meta: Read | None = None
    if before is not None:
        try:
            meta = sidecars.read(os.path.join(directory, sidecar_of(name)))
        except (OSError, MetadataError) as e:
            meta = e
    listed = tuple(digest.files) if files else ()
    return Hashed(digest.md5, with_sidecar(stat_entry(path), before), meta, digest.strong or "", listed)


def hash_each(
    paths: list[str], strong: str | None = None, files: Collection[str] = ()
) -> list[Hashed | Exception]:
    """md5 of several entries (with each file's digests for those in `files`: bundles); an entry
    that cannot be read does not stop the others."""
    results: list[Hashed | Exception] = []
    for path in paths:
        try:
            results.append(hash_entry(path, strong, path in files))
        except Exception as e:  # this entry only; the others of the group go on
            results.append(e)
    return results
