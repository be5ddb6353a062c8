"""Prometheus metrics for GET /metrics, in a registry of live-pull's own.

Counters and histograms move as events are recorded (a Sink); what the status board
already knows (the revision, the ref, the programs' restarts, a pause) is read from it
when the metrics are scraped.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from entrypoint.board import StatusBoard
from entrypoint.events import CHECK_RESULTS, OUTCOMES, ROLLED_BACK, SUCCEEDED, Event, Sink

# Installs take seconds to many minutes; a switch, seconds.
INSTALL_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
UPDATE_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics(Sink):
    def __init__(self, board: StatusBoard) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.checks = Counter(
            "live_pull_checks", "Checks of the remote, by result", ["result"], registry=r
        )
        self.updates = Counter(
            "live_pull_updates",
            "Updates and rollbacks by outcome (succeeded, failed, rolled_back)",
            ["result"],
            registry=r,
        )
        self.installs = Counter("live_pull_installs", "Dependency environments built", registry=r)
        self.install_duration = Histogram(
            "live_pull_install_duration_seconds",
            "Time to build a dependency environment",
            buckets=INSTALL_BUCKETS,
            registry=r,
        )
        self.update_duration = Histogram(
            "live_pull_update_duration_seconds",
            "From a new revision seen to it serving",
            buckets=UPDATE_BUCKETS,
            registry=r,
        )
        self.last_check = Gauge(
            "live_pull_last_check_timestamp_seconds", "When the remote was last asked", registry=r
        )
        self.last_update = Gauge(
            "live_pull_last_update_timestamp_seconds",
            "When a revision last went live (update or rollback)",
            registry=r,
        )
        for result in CHECK_RESULTS:
            self.checks.labels(result)
        for outcome in OUTCOMES:
            self.updates.labels(outcome)
        r.register(_BoardCollector(board))

    def checked(self, result: str) -> None:
        self.checks.labels(result).inc()
        self.last_check.set(time.time())

    def installed(self, seconds: float) -> None:
        self.installs.inc()
        self.install_duration.observe(seconds)

    def record(self, event: Event) -> None:
        if event.outcome is None:
            return
        self.updates.labels(event.outcome).inc()
        if event.outcome in (SUCCEEDED, ROLLED_BACK):
            self.last_update.set(time.time())
        if event.outcome == SUCCEEDED and event.duration_seconds is not None:
            self.update_duration.observe(event.duration_seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _BoardCollector(Collector):
    """What the status board knows, read at scrape time."""

    def __init__(self, board: StatusBoard) -> None:
        self.board = board

    def collect(self) -> Iterator[Metric]:
        facts = self.board.snapshot()
        info = GaugeMetricFamily(
            "live_pull_revision_info",
            "The revision serving, and the ref followed",
            labels=["revision", "ref"],
        )
        if facts.get("revision"):
            info.add_metric([str(facts["revision"]), str(facts.get("ref") or "")], 1)
        yield info
        restarts = CounterMetricFamily(
            "live_pull_app_restarts", "Unexpected exits of the app's programs", labels=["program"]
        )
        for program, count in sorted((facts.get("restarts") or {}).items()):
            restarts.add_metric([program], count)
        yield restarts
        paused = 1 if facts.get("paused") else 0  # the board's `paused` fact, when there is one
        yield GaugeMetricFamily("live_pull_paused", "1 while updates are paused", value=paused)
        yield from _fleet(facts.get("fleet"))


def _fleet(fleet: dict[str, Any] | None) -> Iterator[Metric]:
    """With a fleet store: can it be reached, and how many replicas serve what."""
    if not fleet:
        return
    up = 0 if fleet.get("error") else 1
    yield GaugeMetricFamily("live_pull_fleet_store_up", "1 while the fleet store answers", value=up)
    replicas = GaugeMetricFamily(
        "live_pull_fleet_replicas",
        "Replicas of the fleet that reported in the last 30 s, by the revision they serve",
        labels=["revision"],
    )
    counts = collections.Counter(
        str(replica.get("revision") or "")
        for replica in fleet.get("replicas") or []
        if not replica.get("stale")
    )
    for revision, count in sorted(counts.items()):
        replicas.add_metric([revision], count)
    yield replicas
