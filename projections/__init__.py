"""gpufleet read side: views folded from the event log into SQLite or PostgreSQL, the ledger, the audit and queries.

Projections import only ``events``: they read the log and never write domain facts (the one event
they append is the audit chain's ``AuditCheckpointed``).
"""

from projections.audit import Auditor, AuditReport, Finding, audit_events, audit_jetstream, audit_jsonl
from projections.chain import ChainView, canonical_bytes, chain_step
from projections.eta import EtaError, EtaView, eta_error
from projections.fleet import FleetView, reputation
from projections.jobs import JobsView
from projections.ledger import LedgerView, metered_amount
from projections.projector import Projector, default_views
from projections.query import Balances, JobDetail, ReadModels
from projections.source import read_batches
from projections.storage import (
    Checkpoint,
    ReadModelError,
    ReadModelStore,
    ReadModelUnavailable,
    SqliteStore,
    Table,
    Transaction,
    open_store,
)
from projections.view import View

__all__ = [
    "AuditReport",
    "Auditor",
    "Balances",
    "ChainView",
    "Checkpoint",
    "EtaError",
    "EtaView",
    "Finding",
    "FleetView",
    "JobDetail",
    "JobsView",
    "LedgerView",
    "Projector",
    "ReadModelError",
    "ReadModelStore",
    "ReadModelUnavailable",
    "ReadModels",
    "SqliteStore",
    "Table",
    "Transaction",
    "View",
    "audit_events",
    "audit_jetstream",
    "audit_jsonl",
    "canonical_bytes",
    "chain_step",
    "default_views",
    "eta_error",
    "metered_amount",
    "open_store",
    "read_batches",
    "reputation",
]
