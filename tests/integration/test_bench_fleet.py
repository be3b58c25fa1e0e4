"""Smoke test of the fleet-scale benchmark: ``bench/fleet.py --quick`` runs every phase and reports.

The benchmark measures; it asserts nothing about speed. This only checks that each phase (heartbeating
fleets, the makespan, long tasks at two progress rates) ran on real processes and measured something,
and that the tables and a verdict for every target of issue 13 were printed, so that the script does
not rot between full runs.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_measures_every_phase_and_gives_a_verdict_per_target(tmp_path: Path) -> None:
    figures = tmp_path / "fleet.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fleet.py"), "--quick", "--json", str(figures)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    for title in ("1. Heartbeating fleets", "2. Makespan", "3. Long tasks", "Fleet scale: targets of issue 13"):
        assert title in out, out
    summary = out[out.index("Fleet scale: targets of issue 13") :]
    for target in ("providers heartbeating", "within 3x ideal", "reporting progress", "grow with the progress"):
        assert target in summary, summary

    got = json.loads(figures.read_text())
    # Every fleet size started, and its idle window saw the heartbeats (and the raw floor was measured).
    assert [h["providers"] for h in got["heartbeats"]] == [10, 40]
    for h in got["heartbeats"]:
        assert h["w"] is not None, h["why"]
        assert h["raw"] > 0 and h["w"]["writes"]["KV_gf_heartbeats"] > 0
    # The makespan finished every job; the long tasks were all leased at both progress rates.
    mk = got["makespan"]
    assert mk["done_jobs"] == mk["jobs"] and math.isfinite(mk["seconds"]) and mk["writes_per_task"] > 0
    assert [r["rate"] for r in got["long_tasks"]] == [1.0, 4.0]
    for r in got["long_tasks"]:
        assert r["leased"] >= r["tasks"] and r["w"] is not None and r["w"]["seconds"] > 0
    assert got["durable_grows_with_progress"] in (True, False)
