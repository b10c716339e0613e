"""The worker pools a job runs on (`Jobs.submit`): each kind of work has threads of its own, so that
one kind never waits behind another (the md5 of a big file does not hold back the listing of
file_dir, nor a removal the md5 checks). How many threads each has is the runtime's business
(synkler.runtime.jobs)."""

from __future__ import annotations

import enum


class Pool(str, enum.Enum):
    """A pool of worker threads; the value names its threads."""

    TRANSFER = "transfer"  # rsync runs (max_transfers at once)
    HASH = "hash"  # md5 of entries: upload's offers, central's checks
    SCAN = "scan"  # looks at trees: upload's listing of file_dir, what has arrived at central
    SCRIPT = "script"  # cleanup scripts
    REMOVE = "remove"  # removal of whole trees: central's copies after keep_minutes
    ALERT = "alert"  # notices (synkler.observe.alerts): a send that hangs holds up nothing else

    def __str__(self) -> str:
        return str(self.value)
