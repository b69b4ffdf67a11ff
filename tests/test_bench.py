"""The exchange benchmark runs end to end and reports a well-formed result (no timing limits:
the machine running the tests may be arbitrarily slow or busy)."""

from __future__ import annotations

import json
import math

import pytest

from swarm_dev.bench import RECEIVER_STAGES, SENDER_STAGES, format_bench, model_layout, run_bench


def _positive_floats(values) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in values)


@pytest.mark.slow
def test_a_transfer_between_two_processes_is_timed_and_a_cut_one_resumes():
    """Real processes and sockets: every repeat pulls a verified model (the receiver raises
    otherwise), and a transfer whose sender "crashes" after half its chunks resumes. With a
    window of one chunk, at most one chunk is lost at the cut, so the sender serves just over
    half the model again. A receiver that stops half way and starts again from its saved
    pull takes half the model from disk and pulls only the other half."""
    result = run_bench(size_mb=64, repeats=2, window=1)

    assert result["model_bytes"] == 64 * 1024 * 1024 and result["repeats"] == 2
    for path in ("swarm", "raw_zmq"):
        assert len(result[path]["seconds"]) == 2 and _positive_floats(result[path]["seconds"])
    assert tuple(result["swarm"]["stage_medians"]) == SENDER_STAGES + RECEIVER_STAGES
    assert result["ratio_vs_raw_zmq"] > 0 and result["ratio_with_snapshot"] > 0
    for side in ("sender", "receiver"):  # the whole model lives in each process
        assert result["peak_rss_bytes"][side] > result["model_bytes"]
    resume = result["resume"]
    assert resume["resumed"] is True
    assert 0 < resume["resent_bytes"] <= result["model_bytes"] // 2 + 4 * 1024 * 1024
    assert resume["resent_fraction"] < 0.6
    restart = resume["receiver_restart"]  # the receiver saved half, restarted, and pulled the rest
    assert 0.45 <= restart["from_disk_fraction"] <= 0.6
    assert abs(restart["from_disk_fraction"] + restart["pulled_after_restart_fraction"] - 1.0) < 0.01

    json.dumps(result)  # the CLI prints it with --json
    report = format_bench(result)
    assert "ratio vs raw zmq" in report and "peak RSS" in report and "resume" in report


@pytest.mark.parametrize("size, tensors", [(100 * 1024 * 1024, 0), (2 * 1024 * 1024, 0), (1000, 0), (4096, 7), (40, 10)])
def test_model_layout_sums_to_size(size, tensors):
    layout = model_layout(size, tensors)
    assert sum(math.prod(shape) for _, shape in layout) * 4 == size
    assert len({name for name, _ in layout}) == len(layout)
    assert all(math.prod(shape) > 0 for _, shape in layout)
    if tensors:
        assert len(layout) == tensors
