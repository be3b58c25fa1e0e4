"""A provider runtime's Prometheus metrics, read from its live objects when Prometheus scrapes.

The runtime counts how its leases ended (``ProviderRuntime.stats``); its workers count their restarts
and report their GPU's memory after each task; its calibration is what it registered with. Every
series carries the ``provider`` label, so one collector can serve the runtimes of one machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, get_args

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from events.metrics import Families
from events.types import FailureReason

if TYPE_CHECKING:
    from gpu_runtime.service import ProviderRuntime

__all__ = ["OUTCOMES", "ProviderCollector"]

#: How a lease ends on a provider (``RuntimeStats.tasks``): each is exported from the start, at 0.
OUTCOMES = ("completed", "failed", "revoked", "unreported")


class ProviderCollector(Families):
    """The figures of one or more provider runtimes (``gpufleet_provider_*``)."""

    def __init__(self, *runtimes: ProviderRuntime) -> None:
        self.runtimes = list(runtimes)

    def _families(self, *, live: bool) -> list[Metric]:
        p = "gpufleet_provider"
        who = ["provider"]
        info = GaugeMetricFamily(
            f"{p}_info", "The provider's backend and device (always 1).", labels=[*who, "backend", "device"]
        )
        tasks = CounterMetricFamily(
            f"{p}_tasks",
            "Leases that ended on this provider, by outcome: completed, failed, revoked (stopped by the "
            "orchestrator) or unreported (the report could not be sent).",
            labels=[*who, "outcome"],
        )
        failures = CounterMetricFamily(f"{p}_task_failures", "Failed tasks by reason.", labels=[*who, "reason"])
        restarts = CounterMetricFamily(
            f"{p}_worker_restarts",
            "Worker processes restarted (after a crash, or a task that would not stop).",
            labels=who,
        )
        slots = GaugeMetricFamily(f"{p}_slots", "Worker processes: tasks it runs at once.", labels=who)
        running = GaugeMetricFamily(f"{p}_tasks_running", "Tasks holding a worker now.", labels=who)
        mem_used = GaugeMetricFamily(
            f"{p}_gpu_memory_used_bytes",
            "Memory in use on the GPU (every process), as its workers last reported (after each task).",
            labels=[*who, "device"],
        )
        mem_total = GaugeMetricFamily(f"{p}_gpu_memory_total_bytes", "The GPU's memory.", labels=[*who, "device"])
        flops = GaugeMetricFamily(
            f"{p}_peak_flops",
            "Calibrated matmul throughput, FLOP per second, by precision.",
            labels=[*who, "precision"],
        )
        bandwidth = GaugeMetricFamily(
            f"{p}_memory_bandwidth_bytes_per_second", "Calibrated device memory bandwidth (a copy).", labels=who
        )
        overhead = GaugeMetricFamily(
            f"{p}_task_overhead_seconds", "Calibrated fixed cost of one task on a warm worker.", labels=who
        )
        sandboxes = GaugeMetricFamily(
            f"{p}_sandboxes", "Warm sandboxes of submitters' code, one per slot and submitter.", labels=who
        )
        sandbox_starts = CounterMetricFamily(
            f"{p}_sandbox_starts",
            "Sandboxes started: a submitter's first code on a slot, another submitter's, or a replacement "
            "(after the function left processes, computed while idle, or its sandbox died).",
            labels=who,
        )
        families: list[Metric] = [
            info,
            tasks,
            failures,
            restarts,
            slots,
            running,
            mem_used,
            mem_total,
            flops,
            bandwidth,
            overhead,
            sandboxes,
            sandbox_starts,
        ]
        if not live:
            return families
        for r in self.runtimes:
            pid = r.provider_id
            caps = r.capabilities
            if caps is not None:
                info.add_metric([pid, caps.backend, caps.gpu_model], 1.0)
            for outcome in OUTCOMES:
                tasks.add_metric([pid, outcome], r.stats.tasks.get(outcome, 0))
            for reason in get_args(FailureReason):
                failures.add_metric([pid, reason], r.stats.failures.get(reason, 0))
            restarts.add_metric([pid], r.worker_restarts)
            slots.add_metric([pid], r.slots)
            running.add_metric([pid], r.running)
            for device, (used, total) in sorted(r.gpu_memory().items()):
                mem_used.add_metric([pid, str(device)], used)
                mem_total.add_metric([pid, str(device)], total)
            cal = r.calibration
            if cal is not None:
                for precision, tflops in sorted(cal.matmul_tflops.items()):
                    flops.add_metric([pid, precision], tflops * 1e12)
                bandwidth.add_metric([pid], cal.memory_gbps * 1e9)
                overhead.add_metric([pid], cal.task_overhead_s)
            sandboxes.add_metric([pid], r.sandboxes)
            sandbox_starts.add_metric([pid], r.sandbox_starts)
        return families
