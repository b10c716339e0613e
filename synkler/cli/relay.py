"""`synkler status --relay [--json] [--watch] [--all]`: the whole relay seen from this host.

Reads every agent's presence report and queue through the broker (declaring nothing: a mistyped id
creates no queue) and shows the view synkler.observe.relayview assembles: as text, as JSON, or
redrawn in place (synkler.cli.screen).
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

from ..errors import BrokerError, ExitStatus
from ..observe.relayview import assemble, render
from ..observe.report import Report
from ..text import shown

if TYPE_CHECKING:
    from ..config import Config


def collect(cfg: Config, *, all_finished: bool = False) -> dict[str, Any]:
    """Read every agent's report and queue through the broker and assemble the view."""
    from ..broker.amqp import Broker, BrokerParams

    broker = Broker(BrokerParams.from_config(cfg), cfg.id, cfg.name)
    broker.connect(consume=False, declare=False)
    try:
        ends = (cfg.central_name, cfg.download_name)
        reports = {name: Report.decode(broker.peek_presence(name)) for name in ends}
        central = reports[cfg.central_name]
        uploads = set(central.peers) if central is not None else set()
        if cfg.mode == "upload":
            uploads.add(cfg.name)
        for name in sorted(uploads | {"upload"}):
            reports[name] = Report.decode(broker.peek_presence(name))
        if not uploads or reports["upload"] is not None:
            uploads.add("upload")  # the default name, when central has named no peer yet
        # Central with routes names its downloads; download_name first (its column in the table).
        downloads = [ends[1], *(d for d in (central.destinations if central else ()) if d != ends[1])]
        for name in downloads[1:]:
            reports[name] = Report.decode(broker.peek_presence(name))
        agents = [("upload", n) for n in sorted(uploads)] + [("central", ends[0])]
        agents += [("download", d) for d in downloads]
        queues = {name: broker.queue_info(name) for _, name in agents}
        dead = broker.dead_count()
    finally:
        broker.close()
    return assemble(
        cfg.id,
        agents,
        reports,
        queues,
        dead,
        time.time(),
        seen_from=(cfg.mode, cfg.name),
        all_finished=all_finished,
    )


def cmd_relay(cfg: Config, *, as_json: bool, watch: bool, all_finished: bool, interval: float = 2.0) -> int:
    """`synkler status --relay [--json] [--watch] [--all]`."""
    if not watch:
        view = collect(cfg, all_finished=all_finished)
        if as_json:
            print(json.dumps(view, indent=2, ensure_ascii=True))
        else:
            print("\n".join(render(view, view["at"])))
        return ExitStatus.OK

    def screen_text() -> str:
        try:
            view = collect(cfg, all_finished=all_finished)
        except BrokerError as e:
            return f"relay '{shown(cfg.id)}': cannot read the broker: {shown(str(e))}; trying again"
        return "\n".join(render(view, view["at"]))

    from .screen import watch as watch_screen

    return watch_screen(screen_text, interval, sys.stdout)
