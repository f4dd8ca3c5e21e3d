"""Checks of a Prometheus text exposition (format 0.0.4, what node_exporter's textfile collector reads), done
with the real prometheus_client parsers. Used by tests/unit/test_cli_prometheus.py and
tests/integration/test_cli_scripts.py.

prometheus_client's text parser is lax: a sample that is not under its family's TYPE line does not make it
fail, it comes back as an extra untyped family of its own. So besides parsing, the checks here look at what
came back: one family per name, every one typed and described, no series twice. The OpenMetrics parser, which
is strict about clashing names, then reads the same families as prometheus_client writes them.
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text


class _Families:
    """A collector that yields already-parsed families (to have prometheus_client write them again)."""

    def __init__(self, families) -> None:
        self.families = families

    def collect(self):
        return iter(self.families)


def check_exposition(text: str, allow_untyped: bool = False) -> dict:
    """Assert that `text` is one valid exposition; return {family name: family} as prometheus_client parsed it.

    Family names are the parser's: a counter `x_total` is family `x` with samples `x_total`.
    """
    families = list(parse_text(text))
    names = [f.name for f in families]
    repeated = sorted({n for n in names if names.count(n) > 1})
    assert not repeated, f"families split or repeated: {repeated}"
    for f in families:
        if not allow_untyped:
            assert f.type != "unknown", f"{f.name}: a sample outside its family, or no TYPE"
        assert f.documentation.strip(), f"{f.name}: no HELP"
    series = [(s.name, tuple(sorted(s.labels.items()))) for f in families for s in f.samples]
    twice = sorted({s for s in series if series.count(s) > 1})
    assert not twice, f"series given twice: {twice}"
    # The current exposition format names counters *_total on the TYPE line and the samples alike.
    for m in re.finditer(r"^# TYPE (\S+) counter$", text, re.M):
        assert m.group(1).endswith("_total"), f"counter {m.group(1)} is not named *_total"
    # Every sample line was read into a family (no line silently ignored).
    sample_lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert len(sample_lines) == len(series), (len(sample_lines), len(series))
    registry = CollectorRegistry()
    registry.register(_Families(families))
    list(parse_openmetrics(openmetrics_latest(registry).decode()))  # raises on clashing names
    return {f.name: f for f in families}
