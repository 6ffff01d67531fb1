"""/metrics parses as Prometheus text and its numbers move as trials finish."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Api


def _scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_metrics_move_as_trials_finish(fresh_api: Callable[..., Api]) -> None:
    server = fresh_api()
    with server.client() as client:
        before = _scrape(client)
        assert before[("hpo_trials", (("state", "complete"),))] == 0
        assert before[("hpo_live_workers", ())] == 0
        client.post(
            "/studies",
            json={
                "name": "m",
                "dataset": "digits",
                "n_trials": 2,
                "epochs": 2,
                "sanity_check": False,
            },
        )
        jobs = [
            client.post("/trials/lease", json={"worker": {"id": f"w{i}"}}).json() for i in range(2)
        ]
        during = _scrape(client)
        assert during[("hpo_studies", (("status", "running"),))] == 1
        assert during[("hpo_trials", (("state", "running"),))] == 2
        assert during[("hpo_live_workers", ())] == 2
        assert during[("hpo_leases_total", (("kind", "trial"),))] == 2
        assert during[("hpo_lease_latency_seconds_count", ())] == 2
        client.post(
            f"/trials/{jobs[0]['trial_id']}/complete", json={"worker_id": "w0", "value": 0.9}
        )
        client.post(
            f"/trials/{jobs[1]['trial_id']}/fail",
            json={"worker_id": "w1", "reason": "non-finite loss at epoch 1"},
        )
        after = _scrape(client)
    assert after[("hpo_studies", (("status", "completed"),))] == 1
    assert after[("hpo_trials", (("state", "complete"),))] == 1
    assert after[("hpo_trials", (("state", "fail"),))] == 1
    assert after[("hpo_trials", (("state", "running"),))] == 0
    assert after[("hpo_trial_duration_seconds_count", (("state", "complete"),))] == 1
    assert after[("hpo_trial_duration_seconds_count", (("state", "fail"),))] == 1
