"""The exchange benchmark runs end to end and reports a well-formed result (no timing limits:
the machine running the tests may be arbitrarily slow or busy)."""

from __future__ import annotations

import json
import math

import pytest

from nodes.bench import STAGES, format_bench, model_layout, run_bench


def _positive_floats(values) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in values)


def test_run_bench_small_model_structure_and_verification():
    result = run_bench(size_mb=2, repeats=2)

    assert result["digest_verified"] is True
    assert result["tensors_equal"] is True
    assert result["model_bytes"] == 2 * 1024 * 1024
    assert result["repeats"] == 2
    assert result["frames"] == result["tensors"] + 1
    assert 10 <= result["tensors"] <= 100  # the default layout: a few dozen tensors

    for path in ("swarm", "raw_zmq"):
        stats = result[path]
        assert len(stats["seconds"]) == len(stats["mib_per_s"]) == 2
        assert _positive_floats(stats["seconds"] + stats["mib_per_s"])
        assert _positive_floats([stats["median_seconds"], stats["median_mib_per_s"]])

    stages = result["swarm"]["stages"]
    assert tuple(stages) == STAGES == tuple(result["swarm"]["stage_medians"])
    assert all(len(values) == 2 and all(v >= 0 for v in values) for values in stages.values())
    # The stages are sequential parts of each timed exchange.
    for i, total in enumerate(result["swarm"]["seconds"]):
        assert sum(values[i] for values in stages.values()) <= total * 1.001 + 1e-6

    ratio = result["ratio_vs_raw_zmq"]
    assert isinstance(ratio, float) and math.isfinite(ratio) and ratio > 0
    serve = result["serve"]  # derived: the stages a node repeats for every pull of a published model
    assert len(serve["seconds"]) == 2 and _positive_floats(serve["seconds"])
    assert _positive_floats([serve["median_seconds"], serve["median_mib_per_s"], serve["ratio_vs_raw_zmq"]])

    json.dumps(result)  # the CLI prints it with --json
    report = format_bench(result)
    assert "ratio vs raw zmq" in report and "digest_on_receive" in report


@pytest.mark.parametrize("size, tensors", [(100 * 1024 * 1024, 0), (2 * 1024 * 1024, 0), (1000, 0), (4096, 7), (40, 10)])
def test_model_layout_sums_to_size(size, tensors):
    layout = model_layout(size, tensors)
    assert sum(math.prod(shape) for _, shape in layout) * 4 == size
    assert len({name for name, _ in layout}) == len(layout)
    assert all(math.prod(shape) > 0 for _, shape in layout)
    if tensors:
        assert len(layout) == tensors
