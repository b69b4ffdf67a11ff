"""`swarm-node run --metrics-port N`: the running nodes' state for Prometheus (the optional
extra `metrics`, prometheus-client).

Every scrape reads each node's latest status snapshot (rebuilt by the node's own loop about
once a second and at every round, and replaced whole, so a scrape never sees it half-built).
The names, all prefixed `swarm_node_` and labelled with the node's name:

    published_version                 the head of the node's own update log
    plan_rounds                       rounds in the plan
    running                           1 while the node runs, 0 once it stopped or finished
    manifest_version                  the manifest version it runs under
    bytes_sent_total{peer}            bytes sent to / received from each neighbour
    bytes_received_total{peer}        (strangers are counted under peer="<not a neighbour>")
    rejected_messages_total{reason}   messages refused, per reason
    neighbour_last_heard_age_seconds{peer}   since the neighbour's last message (NaN: never)
    neighbour_suspected{peer}         1 when the failure detector suspects it (rounds do not wait for it) or that age is over 60 s
    neighbour_head_version{peer}      the head of the neighbour's log as this node holds it
    round_seconds                     histogram of the wall time of each round
    disk_free_bytes                   free space where the site directory is
    peak_rss_bytes                    the process's peak memory
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from swarm.errors import UsageError

from .site_status import SILENT_S

ROUND_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, math.inf)


def start_exporter(port: int, host: str, snapshots: Callable[[], Sequence[dict[str, Any]]]) -> Any:
    """Serve /metrics on host:port in a daemon thread; returns the server (shutdown() stops it)."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise UsageError("--metrics-port needs prometheus-client: pip install 'swarm[metrics]'") from None
    registry = CollectorRegistry()
    registry.register(_Collector(snapshots))
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise UsageError(f"--metrics-port {port}: cannot listen on {host}:{port} ({exc.strerror}); choose a free port") from None
    return server


class _Collector:
    def __init__(self, snapshots: Callable[[], Sequence[dict[str, Any]]]) -> None:
        self.snapshots = snapshots

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        now = time.time()
        families = {
            "published_version": GaugeMetricFamily("swarm_node_published_version", "Head of the node's own update log", labels=["node"]),
            "plan_rounds": GaugeMetricFamily("swarm_node_plan_rounds", "Rounds in the plan", labels=["node"]),
            "running": GaugeMetricFamily("swarm_node_running", "1 while the node runs", labels=["node"]),
            "manifest_version": GaugeMetricFamily("swarm_node_manifest_version", "Manifest version the node runs under", labels=["node"]),
            "bytes_sent": CounterMetricFamily("swarm_node_bytes_sent", "Bytes sent per neighbour", labels=["node", "peer"]),
            "bytes_received": CounterMetricFamily("swarm_node_bytes_received", "Bytes received per neighbour", labels=["node", "peer"]),
            "rejected": CounterMetricFamily("swarm_node_rejected_messages", "Messages refused, per reason", labels=["node", "reason"]),
            "heard": GaugeMetricFamily("swarm_node_neighbour_last_heard_age_seconds", "Seconds since the neighbour's last message", labels=["node", "peer"]),
            "suspected": GaugeMetricFamily("swarm_node_neighbour_suspected", f"1 when a running node suspects the neighbour (no answer in time; rounds do not wait for it) or has not heard it for {SILENT_S:.0f} s", labels=["node", "peer"]),
            "head": GaugeMetricFamily("swarm_node_neighbour_head_version", "Head of the neighbour's log as held here", labels=["node", "peer"]),
            "rounds": HistogramMetricFamily("swarm_node_round_seconds", "Wall time of each round", labels=["node"]),
            "disk": GaugeMetricFamily("swarm_node_disk_free_bytes", "Free bytes where the site directory is", labels=["node"]),
            "rss": GaugeMetricFamily("swarm_node_peak_rss_bytes", "Peak memory of the node's process", labels=["node"]),
        }
        for status in self.snapshots():
            if not status:  # a node that has not built its first snapshot yet
                continue
            node = status["node"]
            running = status["state"] == "running"
            families["published_version"].add_metric([node], status["published_seq"])
            families["plan_rounds"].add_metric([node], status["rounds"])
            families["running"].add_metric([node], 1.0 if running else 0.0)
            families["manifest_version"].add_metric([node], status["manifest_version"])
            for peer, count in status["bytes_sent"].items():
                families["bytes_sent"].add_metric([node, peer], count)
            for peer, count in status["bytes_received"].items():
                families["bytes_received"].add_metric([node, peer], count)
            for reason, count in status["rejected"].items():
                families["rejected"].add_metric([node, reason], count)
            for peer, seen in status["neighbours"].items():
                age = now - seen["last_heard"] if seen["last_heard"] is not None else math.nan
                families["heard"].add_metric([node, peer], age)
                families["suspected"].add_metric([node, peer], 1.0 if running and (seen.get("suspected") or not age <= SILENT_S) else 0.0)
                families["head"].add_metric([node, peer], seen["head"])
            durations = status["round_seconds"]
            buckets = [(_bound(b), sum(1 for d in durations if d <= b)) for b in ROUND_BUCKETS]
            families["rounds"].add_metric([node], buckets, sum_value=sum(durations))
            families["disk"].add_metric([node], status["disk_free_bytes"])
            families["rss"].add_metric([node], status["peak_rss_bytes"])
        return list(families.values())


def _bound(bucket: float) -> str:
    return "+Inf" if bucket == math.inf else repr(float(bucket))
