"""`/metrics`: Prometheus exposition through prometheus_client, one registry per app.

`StoreCollector` reads `store.snapshot()` at scrape time (on the event loop, where the store
lives), so the numbers are exactly the panel's. Which keys become which metrics is part of the
snapshot's one definition (`vsr_async/runtime/snapshot.py`). HTTP request counts come from the
middleware.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.core import Metric as PrometheusMetric
from prometheus_client.registry import Collector

from vsr_async.runtime.snapshot import FIELDS, Metric
from vsr_async.runtime.store import StatsStore


@dataclass(frozen=True)
class Exported:
    """One metric family and the snapshot keys that feed it: (label value, key) pairs."""

    metric: Metric
    samples: tuple[tuple[str | None, str], ...]


def exported_metrics() -> tuple[Exported, ...]:
    """The Prometheus table, from the snapshot definition: one family per metric name, in the
    order of the snapshot's keys."""
    families: dict[str, list[tuple[str | None, str]]] = {}
    metrics: dict[str, Metric] = {}
    for field in FIELDS:
        if (metric := field.key.metric) is not None:
            metrics.setdefault(metric.name, metric)
            families.setdefault(metric.name, []).append((metric.label_value, field.name))
    return tuple(Exported(metrics[name], tuple(samples)) for name, samples in families.items())


EXPORTED = exported_metrics()


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


class StoreCollector(Collector):
    """Reads the store on every scrape; values the store does not have yet are left out."""

    def __init__(self, store: StatsStore, sse_clients: Callable[[], int]) -> None:
        self.store = store
        self.sse_clients = sse_clients

    def collect(self) -> Iterator[PrometheusMetric]:
        snap: Mapping[str, Any] = self.store.snapshot()
        for exported in EXPORTED:
            metric = exported.metric
            family_type = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
            if metric.label is None:  # one unlabelled sample
                ((_, key),) = exported.samples
                if (value := _number(snap[key])) is not None:
                    yield family_type(metric.name, metric.help or "", value=value)
                continue
            family = family_type(metric.name, metric.help or "", labels=[metric.label])
            for label_value, key in exported.samples:
                # a map-valued key (layer activity) gives one sample per entry
                entries = (
                    sorted(snap[key].items()) if label_value is None else [(label_value, snap[key])]
                )
                for label, raw in entries:
                    if (value := _number(raw)) is not None:
                        family.add_metric([label], value)
            yield family
        yield GaugeMetricFamily(
            "vsr_panel_event_streams", "Open /api/events streams.", value=self.sse_clients()
        )


def build_registry(store: StatsStore, sse_clients: Callable[[], int]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, sse_clients))
    return registry


def request_counter(registry: CollectorRegistry) -> Counter:
    return Counter(
        "vsr_http_requests",
        "HTTP requests answered by the panel, by route and status.",
        ["method", "route", "status"],
        registry=registry,
    )
