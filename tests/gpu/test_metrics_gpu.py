"""GPU memory in use, as a CUDA worker reports it to the service and the provider's metrics show it."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from events.metrics import MetricsRegistry, render
from events.workloads import MatmulParams
from gpu_runtime.backend import Backend
from gpu_runtime.metrics import ProviderCollector
from gpu_runtime.supervisor import Completed, NullSink, WorkerProcess
from gpu_runtime.worker import TaskSpec, WorkerOptions
from tests.integration.runtime_support import Orchestrator, provider
from tests.secure import SecureServer

pytestmark = pytest.mark.gpu


def test_the_backend_reads_the_memory_in_use_on_its_gpu(cuda: Backend) -> None:
    held = cuda.xp.ones((64, 1 << 20), dtype=cuda.xp.float32)  # 256 MiB
    memory = cuda.memory_in_use()
    assert memory is not None
    used, total = memory
    assert total == cuda.total_memory() and 256 << 20 <= used <= total
    del held


async def test_a_cuda_worker_reports_its_memory_after_each_task(cuda: Backend) -> None:
    worker = WorkerProcess(0, WorkerOptions(backend="cuda"), start_timeout_s=180.0)
    await worker.start()
    try:
        assert worker.memory is not None and worker.memory[1] == cuda.total_memory()  # from its start
        worker.memory = None
        out = await worker.run(TaskSpec(1, "t", "matmul", MatmulParams(n=4096, dtype="fp32")), NullSink(), 120.0)
        assert isinstance(out, Completed)
        # Reported before the outcome, so it is there when the task is: the pool keeps the matrices.
        assert worker.memory is not None and 3 * (64 << 20) <= worker.memory[0] <= worker.memory[1]
    finally:
        await worker.stop()


async def test_the_provider_metrics_show_it(cuda: Backend, nats_server: SecureServer) -> None:
    async with Orchestrator.connect(nats_server) as orch, provider(nats_server, backend="cuda") as rt:
        assert (await orch.run(rt.provider_id, "matmul", {"n": 4096, "dtype": "fp32"})).report == "completed"
        reg = MetricsRegistry()
        reg.register(ProviderCollector(rt))
        text = (await render(reg))[0].decode()
        found = {
            s.name: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.labels.get("device") == "0"
        }
        assert 0 < found["gpufleet_provider_gpu_memory_used_bytes"] <= found["gpufleet_provider_gpu_memory_total_bytes"]
