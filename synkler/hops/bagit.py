"""A BagIt bag (RFC 8493) around a verified entry, for download's `layout: bagit`.

The bag is built in download's staging place and renamed into file_dir whole, like any entry:

    NAME/                     the bag, named like the entry
      bagit.txt               BagIt-Version 1.0, UTF-8
      data/NAME               the entry itself (file, directory or symlink)
      manifest-md5.txt        md5 of every file under data/
      manifest-sha256.txt     sha256 of every file under data/ (the same read)
      bag-info.txt            Bagging-Date, Payload-Oxum, External-Identifier (the entry id),
                              Bag-Software-Agent, and the metadata's single-line scalar values
      metadata.json           the entry's metadata, whole (only when it has some)
      tagmanifest-md5.txt     md5 and sha256 of the tag files above
      tagmanifest-sha256.txt

Building reads the entry once more (both manifests in one read); it runs on a worker. It can be
resumed: a bag cut short by a stop or a crash is found in its work directory and finished.

The files of a bundle (synkler.bundles) become a bag each (`make_member_bags`), built side by side
in one directory of staging: the bag of a member is what its file would have had as an entry of
its own, but for External-Identifier, which names the bundle and the member (`member_identifier`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import Interrupted
from ..linux.fs import fsync_dir, remove_tree
from .checksum import STOPPING, new_md5

METADATA_FILE = "metadata.json"
BAG_THREADS = 8  # the bags of a bundle's files built at once
ALGORITHMS = ("md5", "sha256")
_BUF = 1 << 20


def work_dir(bag: str) -> str:
    """Where the bag is built before it is renamed to `bag`."""
    return bag + ".tmp"


def payload_of(name: str) -> str:
    """Where the entry `name` is in its bag, relative to the bag."""
    return os.path.join("data", name)


def member_identifier(bundle: str, name: str) -> str:
    """The External-Identifier of a bundle's member's bag: the bundle's entry id and the member's
    name, `<bundle id>/<name>` (a line feed or carriage return in it written as in the manifests)."""
    return f"{bundle}/{_encoded(name)}"


def make_member_bags(staged: str, bags: str, members: Sequence[tuple[str, str, str]], agent: str) -> None:
    """Build the bags of members of a bundle pulled to `staged`: for each (name, bag, identifier),
    the file `staged/name` moved into the bag `bags/bag` (make_bag: a bag there already is kept, a
    half-built one finished). Between two bags, the agent's stop ends it (Interrupted)."""
    if not os.path.isdir(bags):
        os.mkdir(bags)
        fsync_dir(os.path.dirname(bags))

    def one(member: tuple[str, str, str]) -> None:
        name, bag, identifier = member
        if STOPPING.is_set():
            raise Interrupted("the agent is stopping")
        make_bag(os.path.join(staged, name), os.path.join(bags, bag), name, None, identifier, agent)

    if len(members) <= BAG_THREADS // 2:
        for member in members:
            one(member)
        return
    # A small file's bag costs its fsyncs (each tag file, the directories), not its reading: several
    # at once overlap their waits on the disk, as fs.write_whole does.
    pool = ThreadPoolExecutor(BAG_THREADS, thread_name_prefix="bag")
    try:
        for _ in pool.map(one, members):
            pass
    finally:  # a failure (or the stop) starts no more of them
        pool.shutdown(wait=True, cancel_futures=True)


def make_bag(
    staged: str, bag: str, name: str, meta: dict[str, Any] | None, entry_id: str, agent: str
) -> None:
    """Build the bag of the entry at `staged` (moved into it) at `bag`; nothing if `bag` is there."""
    if os.path.lexists(bag):
        return
    work = work_dir(bag)
    payload = os.path.join(work, "data", name)
    if not os.path.lexists(payload):
        if os.path.lexists(work):
            remove_tree(work)  # a start that never moved the entry in
        os.makedirs(os.path.join(work, "data"))
        os.rename(staged, payload)
    digests, octets, count = _payload_digests(os.path.join(work, "data"))
    tags = {
        "bagit.txt": "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n",
        "bag-info.txt": bag_info(meta, octets, count, entry_id, agent),
    }
    for alg in ALGORITHMS:
        tags[f"manifest-{alg}.txt"] = "".join(
            f"{digests[path][alg]}  data/{_encoded(path)}\n" for path in sorted(digests)
        )
    if meta:
        tags[METADATA_FILE] = json.dumps(meta, sort_keys=True, ensure_ascii=False, indent=2) + "\n"
    for alg in ALGORITHMS:
        tags[f"tagmanifest-{alg}.txt"] = "".join(
            f"{_digest(alg, text.encode('utf-8'))}  {tag}\n"
            for tag, text in sorted(tags.items())
            if not tag.startswith("tagmanifest-")
        )
    for tag, text in tags.items():
        _write(os.path.join(work, tag), text.encode("utf-8"))
    fsync_dir(work)
    os.rename(work, bag)
    fsync_dir(os.path.dirname(bag))


def bag_info(meta: dict[str, Any] | None, octets: int, count: int, entry_id: str, agent: str) -> str:
    """bag-info.txt: the reserved fields synkler fills, then each metadata key whose value is a
    scalar on one line (strings, numbers, booleans) as a field of its own; the whole metadata, nested
    values included, is in metadata.json."""
    lines = [
        f"Bag-Software-Agent: {agent}",
        f"Bagging-Date: {time.strftime('%Y-%m-%d')}",
        f"External-Identifier: {entry_id}",
        f"Payload-Oxum: {octets}.{count}",
    ]
    for key, value in sorted((meta or {}).items()):
        if isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, (str, int, float)) or not _label_ok(key):
            continue
        text = str(value)
        if "\n" in text or "\r" in text:
            continue
        lines.append(f"{key}: {text}")
    return "\n".join(lines) + "\n"


def _label_ok(key: str) -> bool:
    return ":" not in key and key == key.strip() and key.isprintable()


def _encoded(path: str) -> str:
    """A payload path as manifests write it: CR and LF percent-encoded. RFC 8493 (2.1.3) encodes
    '%' as well, but bagit-python, the validator most use, does not decode it: a name with '%'
    would not validate there. So '%' stays as it is (a name holding "%0A" itself is misread)."""
    return path.replace("\r", "%0D").replace("\n", "%0A")


def _digest(alg: str, data: bytes) -> str:
    h = new_md5() if alg == "md5" else hashlib.new(alg)
    h.update(data)
    return h.hexdigest()


def _payload_digests(data: str) -> tuple[dict[str, dict[str, str]], int, int]:
    """md5 and sha256 of every file under `data` (relative path -> algorithm -> hex), its bytes and
    files. A symbolic link is read through, as BagIt validators do."""
    digests: dict[str, dict[str, str]] = {}
    octets = 0
    for root, dirs, files in os.walk(data):
        dirs.sort()
        for fname in sorted(files):
            full = os.path.join(root, fname)
            rel = os.path.relpath(full, data)
            hashes = {alg: new_md5() if alg == "md5" else hashlib.new(alg) for alg in ALGORITHMS}
            with open(full, "rb") as f:
                while True:
                    if STOPPING.is_set():
                        raise Interrupted("the agent is stopping")
                    block = f.read(_BUF)
                    if not block:
                        break
                    octets += len(block)
                    for h in hashes.values():
                        h.update(block)
            digests[rel] = {alg: h.hexdigest() for alg, h in hashes.items()}
    return digests, octets, len(digests)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
