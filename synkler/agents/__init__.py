"""The three roles. Each is a state machine driven by messages, job results and time."""

from __future__ import annotations

from . import central, download, upload
from .central import Central
from .download import Download
from .facts import Facts
from .upload import Upload

AGENTS = {"upload": Upload, "central": Central, "download": Download}
# What observers (synkler.observe) know of each role's states, by role.
FACTS: dict[str, Facts] = {"upload": upload.FACTS, "central": central.FACTS, "download": download.FACTS}
