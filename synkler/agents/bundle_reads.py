"""Upload's reads of a bundle's members where they are, in file_dir (synkler.agents.upload_bundles):
its md5 (the tree md5 central and download compute of the directory the push makes of them) and
whether each member still holds what it held when the bundle was made.

Nothing here links, copies or changes a member: a bundle is only a list of names, each with the
fingerprint (size, mtime, ctime) it settled with.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .. import bundles
from ..hops.checksum import EntryStat, digest_listed, stat_entry
from .listing import Hashed


def hash_bundle(file_dir: str, members: Sequence[bundles.Member], strong: str | None = None) -> Hashed:
    """md5 of a bundle read in place (each member's digests in `files`), and its fingerprint taken
    after the read from its members' (bundles.signature): a member changed or replaced meanwhile
    gives another fingerprint, one gone an error, and the bundle is withdrawn."""
    if not members:
        raise ValueError("its files are not known here (a bundle of another upload agent)")
    # (counted as the hash of file_dir/<bundle name>, the path presence looks for)
    shown_as = os.path.join(file_dir, bundles.name_of(members[0].bundle))
    digest = digest_listed(file_dir, [m.name for m in members], strong, shown_as)
    now = [(m.name, stat_entry(os.path.join(file_dir, m.name))) for m in members]
    size = sum(st.size for _name, st in now)
    stat = EntryStat(bundles.KIND, size, len(now), bundles.signature((n, st.signature) for n, st in now))
    return Hashed(digest.md5, stat, None, digest.strong or "", tuple(digest.files))


def changed(file_dir: str, members: Sequence[bundles.Member]) -> list[str]:
    """The members whose name no longer holds the content they were bundled with: gone, or another
    fingerprint than the one recorded (changed in place, or another file renamed over it)."""
    out: list[str] = []
    for m in members:
        try:
            now = stat_entry(os.path.join(file_dir, m.name)).signature
        except (OSError, ValueError):
            now = None
        if now is None or now != m.signature:
            out.append(m.name)
    return out


def hash_each(
    file_dir: str, members: Sequence[bundles.Member], strong: str | None = None
) -> list[Hashed | Exception]:
    """hash_bundle as a hash job's outcome (synkler.agents.upload_offers): a list of one, the error
    in it if the bundle cannot be read."""
    try:
        return [hash_bundle(file_dir, members, strong)]
    except Exception as e:  # a member gone or unreadable: the bundle is withdrawn
        return [e]
