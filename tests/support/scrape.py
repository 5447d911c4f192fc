"""Ask a running daemon over its status socket (agent/healthz.py): /metrics parsed with
prometheus_client's own parser, /status as JSON. A unix socket is a file, so the test process
reaches a daemon inside a lab namespace without entering it."""
from __future__ import annotations

import json
from typing import Dict, FrozenSet, Tuple

from prometheus_client.parser import text_string_to_metric_families

from fastflannel.agent.status import UnixHTTPConnection

Series = Dict[Tuple[str, FrozenSet[Tuple[str, str]]], float]


def get(sock: str, path: str) -> Tuple[int, str, bytes]:
    """(status, content type, body) of GET path."""
    conn = UnixHTTPConnection(sock, timeout=5.0)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read()
    finally:
        conn.close()


def parse(text: str) -> Tuple[Series, Dict[str, str]]:
    """({(sample name, labels): value}, {family name: type}) of a text-format page."""
    series: Series = {}
    types: Dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in series, f"duplicate series {key}"
            series[key] = s.value
    return series, types


def metrics(sock: str) -> Tuple[Series, Dict[str, str]]:
    code, ctype, body = get(sock, "/metrics")
    assert code == 200 and ctype.startswith("text/plain; version=0.0.4"), (code, ctype, body[:200])
    return parse(body.decode())


def status(sock: str) -> dict:
    code, _, body = get(sock, "/status")
    assert code == 200, (code, body[:200])
    return json.loads(body)


def value(series: Series, name: str, **labels: str) -> float:
    return series[(name, frozenset(labels.items()))]


def named(series: Series, name: str) -> Dict[FrozenSet[Tuple[str, str]], float]:
    """Every series of sample name `name`, by labels."""
    return {labels: v for (n, labels), v in series.items() if n == name}
