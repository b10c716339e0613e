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
        # A pool: every central of upload's and download's `centrals` (a central knows only itself).
        centrals = list(cfg.central_names)
        reports = {name: Report.decode(broker.peek_presence(name)) for name in (*centrals, cfg.download_name)}
        told = [r for r in (reports[c] for c in centrals) if r is not None]
        uploads = {p for r in told for p in r.peers}
        if cfg.mode == "upload":
            uploads.add(cfg.name)
        for name in sorted(uploads | {"upload"}):
            reports[name] = Report.decode(broker.peek_presence(name))
        if not uploads or reports["upload"] is not None:
            uploads.add("upload")  # the default name, when central has named no peer yet
        # Centrals with routes name their downloads; download_name first (its column in the table).
        named = dict.fromkeys(d for r in told for d in r.destinations)
        downloads = [cfg.download_name, *(d for d in named if d != cfg.download_name)]
        for name in downloads[1:]:
            reports[name] = Report.decode(broker.peek_presence(name))
        agents = [("upload", n) for n in sorted(uploads)] + [("central", c) for c in centrals]
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
