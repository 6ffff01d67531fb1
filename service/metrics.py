"""Prometheus metrics at ``/metrics``.

Gauges of studies, trials and live workers are read from the database at each scrape, so
they are exact however many API processes there are. The counters and histograms (leases
handed out, lease latency, trial durations) count what this process did; with
``--processes N`` each process reports its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from service.models import LeaseRow, StudyRow, WorkerRow, utcnow
from service.runtime import Runtime

STUDY_STATUSES = ("queued", "running", "completed", "stopped", "failed")
TRIAL_STATES = ("running", "complete", "pruned", "fail", "lost", "released")


class _FromDatabase(Collector):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[GaugeMetricFamily]:
        studies = GaugeMetricFamily("hpo_studies", "Studies by status.", labels=["status"])
        trials = GaugeMetricFamily("hpo_trials", "Trials by state.", labels=["state"])
        with self.rt.sessions() as s:
            by_status = dict(s.execute(select(StudyRow.status, func.count())
                                       .group_by(StudyRow.status)).all())
            by_state = dict(s.execute(
                select(LeaseRow.state, func.count())
                .where(LeaseRow.kind == "trial", LeaseRow.trial_id.is_not(None))
                .group_by(LeaseRow.state)).all())
            since = utcnow() - timedelta(seconds=2 * self.rt.settings.lease_seconds)
            live = s.scalar(select(func.count()).select_from(WorkerRow)
                            .where(WorkerRow.last_seen >= since)) or 0
        for status in STUDY_STATUSES:
            studies.add_metric([status], by_status.get(status, 0))
        by_state["running"] = by_state.pop("active", 0) + by_state.pop("pending", 0)
        for state in TRIAL_STATES:
            trials.add_metric([state], by_state.get(state, 0))
        yield studies
        yield trials
        workers = GaugeMetricFamily("hpo_live_workers", "Workers seen within two lease "
                                    "lengths.")
        workers.add_metric([], live)
        yield workers


class Metrics:
    """One process's metrics, in a registry of its own."""

    def __init__(self, rt: Runtime) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_FromDatabase(rt))
        self.leases = Counter("hpo_leases", "Work handed to workers, by kind.", ["kind"],
                              registry=self.registry)
        self.lease_latency = Histogram(
            "hpo_lease_latency_seconds", "Time to answer POST /trials/lease.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry)
        self.trial_duration = Histogram(
            "hpo_trial_duration_seconds", "From lease to result, by final state.", ["state"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
            registry=self.registry)
