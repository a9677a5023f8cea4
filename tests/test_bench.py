"""The benchmark suite still runs: scripts/bench --smoke exercises every phase on a tiny scale.
Its figures are not judged here (speed is measured by scripts/bench, not by tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import scale

ROOT = Path(__file__).resolve().parent.parent


def test_the_benchmark_runs_every_phase_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--smoke",
            "--json",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    methods = {row["method"]: row for row in report["unary"]}
    assert set(methods) == {
        "Health/Check",
        "CreateTask",
        "GetTask",
        "ListTasks",
        "UpdateTaskStatus",
        "BatchCreateTasks",
    }
    assert all(row["errors"] == 0 and row["per_second"] > 0 for row in methods.values())
    assert [row["watchers"] for row in report["watch"]] == [1, 20]
    assert all(row["deliveries"] == row["watchers"] * row["events"] for row in report["watch"])
    assert [row["filter"] for row in report["scale"]] == list(scale.SHAPES)
    assert report["machine"]["cores"] >= 1
    assert "targets met" in result.stdout
