"""`swarm-node status`: what an operator needs to know about a site's node, from the files
the node keeps (status.json, rewritten at every round and state change; metrics.jsonl), the
site's file system, and the clock. Warnings are worded so that each says what to look at."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from swarm.errors import UsageError

from .records import disk_free_bytes, read_metrics
from .site import SiteDir

SILENT_S = 60.0  # a running node that has not heard a neighbour for this long says so
STALE_S = 300.0  # a "running" status.json not rewritten for this long: is the node alive?
LOW_DISK_BYTES = 1024**3
ALONE_ROUNDS = 3  # rounds in a row without a neighbour's model


def site_status(site_dir: Path, now: float | None = None) -> dict[str, Any]:
    """status.json with what the node cannot know about itself: disk free, the last round's
    line, and warnings."""
    site = SiteDir(site_dir)
    try:
        status = json.loads(site.status_path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{site.status_path}: no status yet; has `swarm-node run --site {site.root}` been started?") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{site.status_path}: cannot be read ({exc}); the node rewrites it at its next round") from None
    now = time.time() if now is None else now
    rounds = read_metrics(site.metrics_path, last=ALONE_ROUNDS)
    status["disk_free_bytes"] = disk_free_bytes(site.root)  # now, not when the node last wrote
    status.pop("round_seconds", None)  # for the exporter; the last round's line says more
    status["last_round"] = rounds[-1] if rounds else None
    status["warnings"] = _warnings(status, rounds, now)
    return status


def _warnings(status: dict[str, Any], rounds: list[dict[str, Any]], now: float) -> list[str]:
    warnings = []
    running = status.get("state") == "running"
    if status.get("error"):
        warnings.append(f"stopped: {status['error']}")
    if status.get("halted"):
        warnings.append(f"halted by a manifest version: {status['halted']}")
    updated = status.get("updated")
    if running and updated is not None and now - updated > STALE_S:
        warnings.append(f"status.json says running but was last written {_ago(now - updated)} ago: is the node still running?")
    for peer, seen in sorted(status.get("neighbours", {}).items()):
        heard = seen.get("last_heard")
        if running and (heard is None or now - heard > SILENT_S):
            warnings.append(f"{peer} silent " + ("since the node started" if heard is None else f"for {_ago(now - heard)}") + ": check its node and the link")
        elif running and seen.get("suspected"):
            warnings.append(f"{peer} suspected: it did not answer in time; rounds go on without it until it answers a probe")
    if len(rounds) >= ALONE_ROUNDS and not any(r.get("merged") for r in rounds):
        warnings.append(f"trained alone for the last {len(rounds)} rounds: no neighbour's model arrived")
    if status.get("disk_free_bytes", LOW_DISK_BYTES) < LOW_DISK_BYTES:
        warnings.append(f"disk low: {status['disk_free_bytes'] / 1024**3:.2f} GiB free for the site directory")
    for peer, count in sorted(status.get("rejected_by_peer", {}).items()):
        total = sum(count.values())
        if total:
            warnings.append(f"{total} messages from {peer} refused ({', '.join(f'{k} {v}' for k, v in sorted(count.items()))})")
    return warnings


def format_status(status: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    published = status.get("last_published")
    lines = [
        f"{status['node']}: {status['state']}, version {status['published_seq']} of {status['rounds']} rounds"
        + (f", last published {_ago(now - published)} ago" if published else "")
        + f"; manifest version {status.get('manifest_version', '?')}",
    ]
    last = status.get("last_round")
    if last:
        scores = ", ".join(f"{k} {last[k]:.3f}" for k in ("accuracy", "auc", "dice") if isinstance(last.get(k), (int, float)))
        lines.append(f"last round {last.get('round')}: merged {', '.join(f'{p}#{v}' for p, v in sorted(last.get('merged', {}).items())) or 'nothing'}" + (f"; {scores}" if scores else ""))
    for peer, seen in sorted(status.get("neighbours", {}).items()):
        heard = seen.get("last_heard")
        lines.append(f"  {peer:<20} last heard {(_ago(now - heard) + ' ago') if heard else 'never':<12} its log at #{seen.get('head', 0)}, merged up to #{seen.get('merged', 0)}"
                     + ("; SUSPECTED (not waited for)" if seen.get("suspected") else ""))
    sent, received = sum(status.get("bytes_sent", {}).values()), sum(status.get("bytes_received", {}).values())
    lines.append(f"bytes sent {_size(sent)}, received {_size(received)}; disk free {_size(status['disk_free_bytes'])}")
    rejected = status.get("rejected", {})
    lines.append("refused messages: " + (", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none"))
    lines += [f"WARNING {warning}" for warning in status["warnings"]]
    return "\n".join(lines)


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"
