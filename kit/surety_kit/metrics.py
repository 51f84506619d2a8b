"""The server's /metrics read back: samples by name and labels, requests in flight, settling."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

#: (sample name, sorted (label, value) pairs) → value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def scrape(url: str, timeout: float = 10.0) -> Samples:
    """Every sample of ``url``/metrics (OSError when it does not answer 200)."""
    with _OPENER.open(f"{url}/metrics", timeout=timeout) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def inflight(url: str) -> float | None:
    """Requests in flight in the server, summed over models (None if unknown)."""
    try:
        samples = scrape(url)
    except OSError:
        return None
    values = [value for (name, _), value in samples.items() if name == "surety_inflight_requests"]
    return sum(values) if values else None


def settle(url: str, timeout: float = 120.0, quiet: float = 1.0) -> None:
    """Wait until the server has no request in flight, then ``quiet`` seconds more, so that one
    phase of a benchmark does not bleed into the next (requests a hostile phase queued keep the
    server busy after its clients have gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = inflight(url)
        if count is None or count == 0:
            break
        time.sleep(0.5)
    time.sleep(quiet)
