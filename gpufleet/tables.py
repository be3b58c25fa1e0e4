"""Tables people read: the fleet (shared by ``gpufleet providers`` and the demo), a job's tasks
(``gpufleet status``), the jobs (``gpufleet jobs``) and a quote's device classes (``gpufleet quote``).

Every one reads well in an 80-column terminal: ids never wrap nor lose characters (people copy them),
device names are shortened rather than wrapped, and columns a narrow terminal cannot hold are left
out (they come back in a wider one) rather than squeezed into ellipses."""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

from events.verification import spot_probability
from gpufleet.eta import Eta, short, task_text, took

if TYPE_CHECKING:
    from gpufleet.client import JobStatus

__all__ = ["device_text", "eta_cell", "fleet_table", "job_table", "jobs_table", "narrow_table", "refusals"]

#: Marks and filler words in device names: "Intel(R) Xeon(R) Processor" reads as "Intel Xeon".
_DEVICE_NOISE = re.compile(
    r"\((?:R|TM|tm|r)\)|\b(?:CPU|Processor|Corporation|NVIDIA|GeForce)\b|@\s*[\d.]+\s*GHz|\b\d+-Core\b"
)
#: The longest device name a fleet row shows; a longer one ends in an ellipsis.
DEVICE_WIDTH = 22
#: From these widths on, ``gpufleet jobs`` also shows the cost, then the submitter and the
#: verification policy (``gpufleet status`` shows a job's cost at any width).
WITH_COST = 96
WIDE = 120


def narrow_table(title: str) -> Table:
    """A table that spends its width on its cells: a heavy rule under the header, no frame, two
    spaces between columns."""
    return Table(
        title=title, box=box.SIMPLE_HEAVY, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True
    )


def device_text(backend: str, model: str, vram_mb: int = 0, width: int = DEVICE_WIDTH) -> str:
    """A device in one short line: ``cuda H100 80GB HBM3`` (its memory is in its name), ``cpu Intel
    Xeon 23G`` (memory in GiB)."""
    name = " ".join(_DEVICE_NOISE.sub(" ", model).split())
    memory = f" {vram_mb // 1024}G" if vram_mb >= 1024 and not re.search(r"\d+\s*GB", name) else ""
    text = f"{backend} {name}{memory}"
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def fleet_table(rows: list[Any], width: int = 80) -> Table:
    """The fleet: each provider's verified id, state, device, load, record, trust and earnings.

    Made for a ``width``-column terminal: the slots go with the load (``50%/2``); the results judged
    invalid follow the completed ones, in brackets, when there are any; trust is the count of valid
    results in a row, with the chance that its next paid result is spot-checked; earnings are in
    credits. The device gets the width the other columns leave (it is shortened, never wrapped),
    and the reputation column goes first when even that is too little.
    """
    cells: list[dict[str, str]] = []
    for r in rows:
        cells.append(
            {
                "provider": r.provider_id,
                "state": r.status,
                "device": device_text(r.backend, r.gpu_model, r.vram_mb, width=64),
                "busy": f"{r.utilisation:.0%}/{r.slots}",
                "done": f"{r.completions} ({r.invalid_results})" if r.invalid_results else str(r.completions),
                "trust": f"{r.consecutive_valid} ({spot_probability(r.consecutive_valid):.0%})",
                "rep.": f"{r.reputation:.2f}",
                "earned": f"{r.earnings_micros / 1e6:.4f}",
            }
        )
    columns = ["provider", "state", "device", "busy", "done", "trust", "rep.", "earned"]

    def room(cols: list[str]) -> int:
        others = sum(max([len(c)] + [len(row[c]) for row in cells]) for c in cols if c != "device")
        return width - others - 2 * (len(cols) - 1)

    if room(columns) < 14:
        columns.remove("rep.")
    device_width = max(12, min(DEVICE_WIDTH + 10, room(columns)))
    t = narrow_table(f"{len(rows)} provider(s)")
    for col in columns:
        t.add_column(col, no_wrap=True, max_width=device_width if col == "device" else None)
    for r, row in zip(rows, cells, strict=True):
        row["device"] = device_text(r.backend, r.gpu_model, r.vram_mb, width=device_width)
        t.add_row(*(row[c] for c in columns))
    return t


def job_table(st: JobStatus, now: datetime) -> Table:
    """A job's tasks: state (with the attempt, from the second on), provider, progress and time
    (``1.2 s (0.9-1.6)`` while it runs, ``took 1.3 s`` once done). 80 columns hold it for the ids
    ``submit`` makes; a longer task id folds before the time does."""
    t = narrow_table(f"job {st.job_id}: {st.status}")
    for col in ("task", "state", "provider", "done", "eta"):
        t.add_column(col, no_wrap=col in ("eta", "done"), overflow="fold", justify="right" if col == "done" else "left")
    for task in st.tasks:
        t.add_row(
            task.task_id,
            task.status + (f" #{task.attempt}" if task.attempt > 1 else ""),
            task.provider_id or "",
            f"{task.progress:.0%}",
            task_text(task, now),
        )
    return t


def eta_cell(row: Any, now: float) -> str:
    """The ETA view's row of a job (``projections.eta.EtaJobRow``) as a ``gpufleet jobs`` cell: time left
    with its interval, ``overdue 12 s`` past its high end, ``took 4m 12s`` once completed. ``now`` and
    the row's times are epoch seconds; rows from before intervals existed show the point only."""
    if row is None:
        return ""
    if row.finished_ts is not None:
        return took(row.actual_s) if row.status == "completed" and row.actual_s is not None else ""
    if row.eta_ts is None:
        return ""
    low_ts = getattr(row, "eta_low_ts", None)
    high_ts = getattr(row, "eta_high_ts", None)
    end = high_ts if high_ts is not None else row.eta_ts
    if now > end:
        return short(Eta(0.0, overdue_s=now - end, expected_s=row.predicted_s))
    if low_ts is None or high_ts is None:
        return short(Eta(row.eta_ts - now))
    return short(Eta(max(0.0, row.eta_ts - now), max(0.0, low_ts - now), high_ts - now))


def _credits(micros: int) -> str:
    return "0" if micros == 0 else f"{micros / 1e6:.6f}"


def jobs_table(rows: list[Any], etas: dict[str, Any], now: float, width: int) -> Table:
    """``gpufleet jobs``: each job's id, workload, status, tasks done, ETA (or time taken) and cost.

    Ids, workloads and task counts never wrap; the status and the ETA wrap when they must. The job id
    already names its submitter (``alice.j1``): the cost gets a column from :data:`WITH_COST` columns
    on, the submitter and the verification policy from :data:`WIDE` on. Results verification judged
    invalid show in the status (``completed, 2 invalid``), at any width.
    """
    columns = ["job", "workload", "status", "tasks", "eta"]
    if width >= WIDE:
        columns[2:2] = ["submitter"]
        columns.append("verify")
    if width >= WITH_COST:
        columns.append("credits")
    t = narrow_table(f"{len(rows)} job(s)")
    for col in columns:
        wraps = col in ("status", "eta")
        t.add_column(
            col,
            no_wrap=not wraps,
            min_width=9 if wraps else None,
            justify="right" if col in ("tasks", "credits") else "left",
        )
    for r in rows:
        status = r.status + (f", {r.invalid_results} invalid" if r.invalid_results else "")
        tasks = f"{r.tasks_completed}/{r.task_count} {r.progress:.0%}" if r.task_count else "-"
        cells = {
            "job": r.job_id,
            "workload": r.workload or "-",
            "submitter": r.submitter,
            "status": status,
            "tasks": tasks,
            "eta": eta_cell(etas.get(r.job_id), now),
            "verify": r.verify,
            "credits": _credits(r.cost_micros),
        }
        t.add_row(*(cells[c] for c in columns))
    return t


def refusals(rows: list[Any]) -> list[str]:
    """Why each rejected job of ``rows`` was rejected, one line each: ``alice.j2: priority: Input should
    be less than or equal to 9``. Strangers wrote these reasons: print them without markup."""
    return [f"{r.job_id}: {r.why() or 'no reason recorded'}" for r in rows if r.status == "rejected"]


#: The quotas as ``gpufleet quota`` shows them: (limit, usage key, what it counts).
_QUOTA_ROWS = (
    ("jobs_in_flight", "jobs_in_flight", "jobs submitted or accepted, not ended"),
    ("tasks_queued", "tasks_queued", "tasks not leased yet (created or waiting to be)"),
    ("tasks_running", "tasks_running", "tasks leased or running"),
    ("object_bytes", "object_bytes", "bytes of inputs in the object store"),
    ("intake_per_s", "intake_refused", "messages a second (refused so far)"),
)


def _quota_value(name: str, value: Any) -> str:
    """A limit or a usage as ``gpufleet quota`` shows it: counts whole, bytes in binary units."""
    if name == "object_bytes":
        return _compact(name, value)
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def _compact(name: str, value: Any) -> str:
    """A count in at most five characters: 999, 9,999, 12.3k, 10.0M; bytes: 512B, 3.0GiB."""
    n = float(value)
    if name != "object_bytes" and n < 10_000:
        return f"{int(n):,}"
    base, units, tail = (1024.0, "KMGT", "iB") if name == "object_bytes" else (1000.0, "kMGT", "")
    if n < base:
        return f"{n:.0f}" + ("B" if tail else "")
    for unit in units:
        n /= base
        if n < base or unit == units[-1]:
            return f"{n:.1f}{unit}{tail}"
    return str(value)  # pragma: no cover


def quota_table(doc: dict[str, Any]) -> Table:
    """One submitter's quotas and usage (``Client.quota``), or, for an auditor's answer, every busy
    submitter's usage against its limits, one row each."""
    if "submitter" in doc:
        t = narrow_table(f"quotas of {doc['submitter']}")
        for col in ("limit", "used", "of", "counts"):
            t.add_column(col, justify="right" if col in ("used", "of") else "left")
        limits, usage = doc.get("limits", {}), doc.get("usage", {})
        for name, key, what in _QUOTA_ROWS:
            shown = f"{_quota_value(name, limits.get(name, 0))}"
            if name == "intake_per_s":
                shown += f" (burst {int(limits.get('intake_burst', 0)):,})"
            t.add_row(name, _quota_value(name, usage.get(key, 0)), shown, what)
        return t
    t = narrow_table("quotas: used/limit, by submitter")
    t.add_column("submitter", overflow="fold")
    for header in ("jobs", "queued", "running", "objects"):
        t.add_column(header, justify="right", no_wrap=True)
    default = doc.get("default", {})
    t.add_row("(default)", *(_compact(n, default.get(n, 0)) for n, _, _ in _QUOTA_ROWS[:4]), style="dim")
    for who, one in sorted(doc.get("submitters", {}).items()):
        limits, usage = one.get("limits", {}), one.get("usage", {})
        t.add_row(
            who,
            *(f"{_compact(n, usage.get(k, 0))}/{_compact(n, limits.get(n, 0))}" for n, k, _ in _QUOTA_ROWS[:4]),
        )
    return t
