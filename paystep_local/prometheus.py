"""Read a process's Prometheus metrics: scrape the text format, look a sample up.

    text = scrape(proc.urls["metrics"])
    metric(text, "paystep_worker_messages_total", outcome="deleted")

A lookup sums the samples of `name` whose labels include the given ones and
fails when none does, naming the series that exist: a misspelt name or label
never reads as 0. Where a labelled child may rightly not exist yet (a counter
never incremented), say so with `default=0`: the family must still be declared.
(https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format)
"""

from __future__ import annotations

import re
import urllib.request
from typing import Final

LABEL: Final = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class NoSuchSeries(AssertionError):
    """No sample of the metric carries the labels looked up."""


def scrape(metrics_url: str, timeout_s: float = 5.0) -> str:
    """The text of `metrics_url`/metrics."""
    with urllib.request.urlopen(metrics_url + "/metrics", timeout=timeout_s) as answer:
        text: str = answer.read().decode()
        return text


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of `name` (exactly: not its `_total`/`_bucket` siblings) with its labels."""
    found = []
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample == name:
            found.append((dict(LABEL.findall(label_text)), float(value)))
    return found


def metric(text: str, name: str, *, default: float | None = None, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`.

    Raises `NoSuchSeries` when none matches, unless `default` is given and the
    family is declared (its `# TYPE` line is there).
    """
    matching = [
        value
        for got, value in samples(text, name)
        if all(got.get(key) == wanted for key, wanted in labels.items())
    ]
    if matching:
        return sum(matching)
    if default is not None and _family_declared(text, name):
        return default
    existing = [got for got, _ in samples(text, name)]
    raise NoSuchSeries(
        f"no sample of {name} with labels {labels}; its series: {existing or 'none'}"
    )


def _family_declared(text: str, name: str) -> bool:
    family = re.sub(r"_(total|count|sum|bucket|created)$", "", name)
    return any(
        line.startswith(f"# TYPE {candidate} ")
        for line in text.splitlines()
        for candidate in {name, family}
    )
