"""The three roles. Each is a state machine driven by messages, job results and time."""

from __future__ import annotations

from .central import Central
from .download import Download
from .upload import Upload

AGENTS = {"upload": Upload, "central": Central, "download": Download}
