"""Prometheus metrics at ``/metrics``.

Gauges of studies, trials and live workers are read from the database at each scrape, so
they are exact however many API processes there are. The counters and histograms (leases
handed out, lease latency, trial durations) count what this process did; with
``--processes N`` each process reports its own.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from service.domain import workers_seen
from service.domain.studies import trial_counts
from service.states import StudyStatus
from service.storage.runtime import Runtime
from service.storage.tables import StudyRow


class _FromDatabase(Collector):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[GaugeMetricFamily]:
        studies = GaugeMetricFamily("hpo_studies", "Studies by status.", labels=["status"])
        trials = GaugeMetricFamily("hpo_trials", "Trials by state.", labels=["state"])
        with self.rt.sessions() as s:
            by_status = dict(
                s.execute(select(StudyRow.status, func.count()).group_by(StudyRow.status)).all()
            )
        for status in StudyStatus:
            studies.add_metric([status], by_status.get(status, 0))
        for state, n in trial_counts(self.rt).items():
            trials.add_metric([state], n)
        yield studies
        yield trials
        workers = GaugeMetricFamily("hpo_live_workers", "Workers seen within two lease lengths.")
        workers.add_metric([], workers_seen.count_live(self.rt))
        yield workers


class Metrics:
    """One process's metrics, in a registry of its own."""

    def __init__(self, rt: Runtime) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_FromDatabase(rt))
        self.leases = Counter(
            "hpo_leases", "Work handed to workers, by kind.", ["kind"], registry=self.registry
        )
        self.lease_latency = Histogram(
            "hpo_lease_latency_seconds",
            "Time to answer POST /trials/lease.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.trial_duration = Histogram(
            "hpo_trial_duration_seconds",
            "From lease to result, by final state.",
            ["state"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
            registry=self.registry,
        )
