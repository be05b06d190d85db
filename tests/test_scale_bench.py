"""benchmarks/scale.py at its tiny size: every stage measured in its own process, with sane figures."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import run_tiny_benchmark

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["baseline", "merge", "read", "features", "interval", "min", "max", "medium", "random", "kcenter", "herding", "package"]


def test_tiny_run_reports_every_stage(tmp_path: Path) -> None:
    (result,) = run_tiny_benchmark("scale.py", tmp_path, timeout=120)["results"]
    assert result["rows"] == 3000 and result["classes"] == 3
    assert 732 <= result["class_sizes"][0] <= result["class_sizes"][1] <= 1300
    assert list(result["stages"]) == STAGES
    baseline = result["stages"]["baseline"]["peak_rss_bytes"]
    assert 50 * 2**20 < baseline < 8 * 2**30
    for stage, figures in result["stages"].items():
        assert 0 <= figures["seconds"] < 60, stage
        assert 50 * 2**20 < figures["peak_rss_bytes"] < baseline + 2**30, stage  # a few thousand rows add little
    # The figures rank the stages by the work they do, which is what the benchmark is read for.
    seconds = {stage: figures["seconds"] for stage, figures in result["stages"].items()}
    sorts = max(seconds[stage] for stage in ("interval", "min", "max", "medium", "random"))  # per-class sorts of 3,000 scores
    assert min(seconds["kcenter"], seconds["herding"]) > sorts  # greedy passes over 768-wide features
    assert min(seconds["merge"], seconds["features"], seconds["package"]) > seconds["read"]  # writing, or reading the features, vs the scores alone


def test_synthetic_class_sizes_are_imagenet_shaped() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import numpy as np
        from scale import IMAGENET_ROWS, class_sizes
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    for rows, classes in [(IMAGENET_ROWS, 1000), (128_116, 100), (3000, 3)]:
        sizes = class_sizes(rows, np.random.default_rng(0))
        assert len(sizes) == classes and sizes.sum() == rows
        assert sizes.min() >= 732 and sizes.max() <= 1300
