"""Central's entry states, apart so that the modules of central's role (synkler.agents.central and
its parts) all name them; where each may go next, and what observers know of them, are declared
with the role in synkler.agents.central."""

from __future__ import annotations

from .base import Status


class Mid(Status):
    """Central's entry states."""

    WAITING = "waiting"
    UPLOADING = "uploading"
    VERIFYING = "verifying"
    DOWNLOADING = "downloading"
    DELIVERED = "delivered"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"
    FAILED = "failed"
    FORGOTTEN = "forgotten"


IN_FLIGHT = (Mid.WAITING, Mid.UPLOADING, Mid.VERIFYING)  # their staged copies may still be needed
