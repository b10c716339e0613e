"""A view redrawn in place on a terminal (`synkler status --relay --watch`): the one module that
imports rich."""

from __future__ import annotations

import time
from typing import Callable, TextIO

from ..errors import ExitStatus


def watch(text: Callable[[], str], interval: float, stream: TextIO) -> int:
    """Show `text()` full screen, redrawn every `interval` s, until Ctrl-C (exit status 0: it is how
    one quits). The terminal gets its screen back as it was."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console(file=stream)
    try:
        # Text, never markup: a name like "[bold]" is shown as it is (and escaped before this).
        with Live(Text(text()), console=console, screen=True, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(Text(text()), refresh=True)
    except KeyboardInterrupt:
        return ExitStatus.OK
