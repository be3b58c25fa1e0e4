"""Regenerate the golden log and the read models and audit it must replay to.

    .venv/bin/python -m tests.golden.make_golden

Run it only when a change of the contract or of a view is intended; review the diff of the JSON.
The lead may later replace ``golden_log.jsonl`` by the export of a real orchestrator run.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from events import MemoryEventStore, to_json_line
from projections import Projector, SqliteStore
from projections.audit import audit_jsonl
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
    from events import from_json_line

    store = MemoryEventStore()
    for line in log.read_text().splitlines():  # noqa: ASYNC240 (a small file, in a test)
        env = from_json_line(line)
        result = await store.append(env.subject, [env], expected=None)
        assert result.first == env.sequence, "the golden log's positions must be 1..n"
    with tempfile.TemporaryDirectory() as tmp:
        db = SqliteStore(Path(tmp) / "golden.db")
        projector = Projector(store, db, batch_size=17)  # odd batches: commits fall mid-story
        await projector.catch_up()
        tables = {name: [list(row) for row in rows] for name, rows in projector.dump().items()}
        db.close()
    return tables


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
