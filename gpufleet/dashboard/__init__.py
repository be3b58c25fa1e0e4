"""The live web dashboard: jobs, tasks, the fleet, the ledger, the audit and charts, pushed as they change.

``create_app(Source(...))`` is the ASGI app (Starlette); ``DashboardServer`` serves it with uvicorn
inside a running event loop (``gpufleet up`` does); ``serve_network`` is ``gpufleet dashboard``.
"""

from gpufleet.dashboard.app import LOCAL_HOSTS, VIEWS, SignedCheckpoint, Source, create_app
from gpufleet.dashboard.notify import Changes
from gpufleet.dashboard.serve import DEFAULT_PORT, DashboardError, DashboardServer

__all__ = [
    "DEFAULT_PORT",
    "LOCAL_HOSTS",
    "VIEWS",
    "Changes",
    "DashboardError",
    "DashboardServer",
    "SignedCheckpoint",
    "Source",
    "create_app",
]
