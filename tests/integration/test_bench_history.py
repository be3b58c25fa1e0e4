"""``bench/history.py --quick`` runs end to end and prints its tables.

The benchmark checks what it measures as it goes (the 200-task job reads as completed with every
result digest verified; the restarted orchestrator completes a probe job; the generated log holds
every event written), and exits non-zero if any of that fails. So this smoke test also shows that the
fast log generator (``bench/loggen_fast.py``) writes logs that the client and a real orchestrator
process take as real ones.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]


def test_history_bench_quick_prints_its_tables() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "history.py"), "--quick"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=200,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    for title in ("A. one 200-task job's cost", "B. orchestrator start", "summary: issue 13 history targets"):
        assert title in out, out[-4000:]
    # Both logs were written whole, with live work in them.
    logs = re.findall(r"log 10\^(\d): ([\d,]+) events, ([\d,]+) live tasks", out)
    assert [e for e, _, _ in logs] == ["3", "4"], out[-4000:]
    for _, events, live in logs:
        assert int(live.replace(",", "")) > 0
        assert int(events.replace(",", "")) >= 1000
    # Every client measure and every restart has a figure.
    assert len(re.findall(r"\d ms", out)) >= 6, out[-4000:]
    assert len(re.findall(r"\d MB", out)) >= 8, out[-4000:]
    assert out.count("restart: snapshot") == 2, out[-4000:]  # each log: a restart from the snapshot
    for target in ("status() flat", "result() flat", "events() catch-up flat", "restart to serving", "RSS bounded"):
        assert target in out, out[-4000:]
