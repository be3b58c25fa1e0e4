"""Regenerate the synthetic golden log (from ``loggen``) and the read models and audit it must replay to.

    .venv/bin/python -m tests.golden.make_golden

Run it only when a change of the contract or of a view is intended; review the diff of the JSON.
The log is generated, not recorded: it never touched the deciders, and it keeps the pre-identity
ids (``j1``, ``j1-0``) and intake subjects of an open network's log. The history recorded from a
real run is ``record.py``'s (``golden_real_*``), which the deciders and World replay as well.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from events import to_json_line
from projections.audit import audit_jsonl
from tests.golden.history import read_log, read_models
from tests.golden.loggen import golden_scenario

HERE = Path(__file__).parent
LOG = HERE / "golden_log.jsonl"
INTAKE = HERE / "golden_intake.jsonl"
READ_MODELS = HERE / "golden_readmodels.json"
AUDIT = HERE / "golden_audit.json"


def load_intake(path: Path = INTAKE) -> dict[int, str]:
    """Intake sequence -> subject, from the golden intake file."""
    out: dict[int, str] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out[int(rec["seq"])] = rec["subject"]
    return out


async def replay(log: Path = LOG) -> dict[str, Any]:
    """The read models that the golden log replays to, as JSON-ready tables."""
    return await read_models(read_log(log))


async def main() -> None:
    sim = golden_scenario()
    LOG.write_text("".join(to_json_line(env) + "\n" for env in sim.events))
    INTAKE.write_text(
        "".join(
            json.dumps({"seq": i, "subject": subject, "body": body.decode()}, sort_keys=True) + "\n"
            for i, (subject, body) in enumerate(sim.intake, start=1)
        )
    )
    READ_MODELS.write_text(json.dumps(await replay(), indent=1, sort_keys=True) + "\n")
    report = await audit_jsonl(LOG, load_intake())
    AUDIT.write_text(json.dumps(report.to_json(), indent=1, sort_keys=True) + "\n")
    print(f"{len(sim.events)} events, {len(sim.intake)} intake messages; audit ok={report.ok}")


if __name__ == "__main__":
    asyncio.run(main())
