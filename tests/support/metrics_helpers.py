"""Reading the agents' metrics as Prometheus would: scraped over loopback HTTP, the hop counters
compared with what was relayed (tests/e2e/test_metrics_scrape.py, test_confined_paths.py)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, str], float]:
    """(sample name, its hop or state label) -> value, from Prometheus text."""
    return {
        (s.name, s.labels.get("hop") or s.labels.get("state") or s.labels.get("peer") or ""): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def hop_counters(port: int) -> dict[tuple[str, str], float]:
    """(counter, hop) -> value, the hop counters only."""
    names = ("synkler_hop_entries_total", "synkler_hop_bytes_total")
    return {k: v for k, v in samples(scrape(port)).items() if k[0] in names}


def expected(role: str, n: int, size: int) -> dict[tuple[str, str], float]:
    hops = {"upload": ("push", "relay"), "central": ("push", "pull"), "download": ("pull",)}[role]
    return {
        **{("synkler_hop_entries_total", hop): n for hop in hops},
        **{("synkler_hop_bytes_total", hop): size for hop in hops},
    }
