"""Prometheus metrics of a gpufleet network: ``/metrics`` for ``up``, the orchestrator and providers.

Every component keeps plain figures on its hot path; a collector beside it (``actors.metrics``,
``gpu_runtime.metrics``, ``projections.metrics``) names them when Prometheus scrapes. Here they are
put together: one :class:`MetricsRegistry` per network or process (never the module-wide default, so
that many networks in one process never collide), served by :func:`serve_metrics` (``--metrics
HOST:PORT``) or mounted in a web app with :func:`metrics_app`. README, "Metrics", lists every figure.

To mount it in a Starlette app (the dashboard does, on ``gpufleet up``'s dashboard port)::

    Route("/metrics", metrics_app(net.metrics_registry))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.metrics import OrchestratorCollector
from events.metrics import MetricsApp, MetricsRegistry, MetricsServer, metrics_app, parse_listen, render, serve_metrics
from gpu_runtime.metrics import ProviderCollector
from projections.metrics import ProjectorCollector

if TYPE_CHECKING:
    from actors.orchestrator import Orchestrator
    from gpu_runtime.service import ProviderRuntime
    from gpufleet.network import LocalNetwork
    from projections.projector import Projector

__all__ = [
    "MetricsApp",
    "MetricsRegistry",
    "MetricsServer",
    "OrchestratorCollector",
    "ProjectorCollector",
    "ProviderCollector",
    "metrics_app",
    "parse_listen",
    "register_network",
    "registry_for",
    "render",
    "serve_metrics",
]


def registry_for(
    *,
    orchestrator: Orchestrator | None = None,
    providers: tuple[ProviderRuntime, ...] = (),
    projector: Projector | None = None,
    registry: MetricsRegistry | None = None,
) -> MetricsRegistry:
    """A registry (``registry``, else a new one with this process's figures) with a collector for each
    component given."""
    reg = registry if registry is not None else MetricsRegistry(process=True)
    if orchestrator is not None:
        reg.register(OrchestratorCollector(orchestrator))
    if providers:
        reg.register(ProviderCollector(*providers))
    if projector is not None:
        reg.register(ProjectorCollector(projector))
    return reg


def register_network(registry: MetricsRegistry, net: LocalNetwork) -> MetricsRegistry:
    """Register collectors for the parts ``net`` runs: its orchestrator, provider and projector."""
    return registry_for(
        orchestrator=net.orchestrator,
        providers=(net.provider,) if net.provider is not None else (),
        projector=net.projector,
        registry=registry,
    )
