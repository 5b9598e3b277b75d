"""/metrics is written by prometheus-client: every value exact (the hand-written text printed 1234567 as
`1.23457e+06`, so counters stalled, then jumped), every name, label and bucket API.md names, and the format the
scraper asks for."""

from __future__ import annotations

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from api.health import BUCKETS, MetricValues, exposition

BIG = MetricValues(
    outcomes={"completed": 1_234_567, "failed": 9_876_543_210, "timed_out": 1_000_001},
    duration_buckets=[1_000_000 + i for i in range(len(BUCKETS))],
    duration_sum=1_234_567.891,
    duration_count=2_000_003,
    clips={"pending": 1_234_567, "completed": 7_654_321},
    feed_subscribers=3,
    reactor_lag=1_048_577,
    dispatch_waiting={"interactive": 1_234_568, "batch": 2},
    dispatch_oldest_wait=3600.5,
)


def _samples(text: str, parse=text_string_to_metric_families) -> dict[tuple[str, tuple], float]:  # noqa: ANN001
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parse(text) for s in f.samples}


def test_values_above_a_million_are_written_exactly() -> None:
    body, content_type = exposition(BIG, None)
    samples = _samples(body.decode())
    assert samples[("cliplog_extraction_attempts_total", (("outcome", "completed"),))] == 1_234_567
    assert samples[("cliplog_extraction_attempts_total", (("outcome", "failed"),))] == 9_876_543_210
    assert samples[("cliplog_extraction_attempts_total", (("outcome", "timed_out"),))] == 1_000_001
    assert samples[("cliplog_clips", (("status", "pending"),))] == 1_234_567
    assert samples[("cliplog_clips", (("status", "completed"),))] == 7_654_321
    assert samples[("cliplog_reactor_lag_events", ())] == 1_048_577
    assert samples[("cliplog_dispatch_waiting", (("priority", "interactive"),))] == 1_234_568
    assert samples[("cliplog_dispatch_waiting", (("priority", "batch"),))] == 2
    assert samples[("cliplog_dispatch_oldest_wait_seconds", ())] == 3600.5
    assert samples[("cliplog_extraction_duration_seconds_count", ())] == 2_000_003
    assert samples[("cliplog_extraction_duration_seconds_sum", ())] == 1_234_567.891
    assert samples[("cliplog_extraction_duration_seconds_bucket", (("le", "600"),))] == 1_000_000 + len(BUCKETS) - 1
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"


def test_every_metric_api_md_names_keeps_its_type_labels_and_buckets() -> None:
    body, _ = exposition(BIG, None)
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert {name: f.type for name, f in families.items()} == {
        "cliplog_extraction_attempts": "counter",
        "cliplog_extraction_duration_seconds": "histogram",
        "cliplog_clips": "gauge",
        "cliplog_feed_subscribers": "gauge",
        "cliplog_reactor_lag_events": "gauge",
        "cliplog_dispatch_waiting": "gauge",
        "cliplog_dispatch_oldest_wait_seconds": "gauge",
    }
    outcomes = {s.labels["outcome"] for s in families["cliplog_extraction_attempts"].samples}
    assert outcomes == {"completed", "failed", "timed_out", "cancelled"}
    statuses = {s.labels["status"]: s.value for s in families["cliplog_clips"].samples}
    assert statuses == {
        "pending": 1_234_567, "running": 0, "retrying": 0, "completed": 7_654_321, "failed": 0, "cancelled": 0
    }
    bounds = [s.labels["le"] for s in families["cliplog_extraction_duration_seconds"].samples if s.name.endswith("_bucket")]
    assert bounds == [f"{b:g}" for b in BUCKETS] + ["+Inf"]


def test_an_openmetrics_scraper_gets_openmetrics() -> None:
    body, content_type = exposition(BIG, "application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.decode().endswith("# EOF\n")
    samples = _samples(body.decode(), parse_openmetrics)
    assert samples[("cliplog_extraction_attempts_total", (("outcome", "completed"),))] == 1_234_567
