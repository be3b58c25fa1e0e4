"""The ledger view: double-entry books of what submitters paid and providers earned, in integer micros.

Each job has an escrow account. Settlement posts two kinds of balanced entries:

- ``SubmitterCharged``: debit ``submitter:<s>``, credit ``escrow:<job>``;
- ``ProviderCredited``: debit ``escrow:<job>``, credit ``provider:<p>``.

``UsageMetered`` is the source document: it posts nothing, but it is what every settlement is checked
against. The books balance when, per job, charged == sum(metered) == sum(credited) (so the escrow is
empty), per job and provider the credit equals that provider's metered usage, and per submitter and
per provider the settled amounts equal the metered usage of their settled jobs. GPU time is booked
beside the money and must balance the same way.

Under verification (``events.verification``) a returned result is *held*: it is shown in the job's
``held_micros`` until its verdict. A valid one is then metered (and paid at settlement); an invalid
or inconclusive one is *forfeited*: never charged to the submitter, never credited to its provider.
Per job: held results = metered valid results + forfeited + still held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from events.envelope import Envelope
from events.job import ProviderCredited, SubmitterCharged, UsageMetered
from events.metering import metered_amount
from events.subjects import job_of_task
from events.task import TaskResultJudged, TaskResultReturned
from projections.storage import Table
from projections.view import View, iso

__all__ = [
    "ACCOUNTS",
    "LEDGER_JOBS",
    "LEDGER_JOB_PROVIDERS",
    "POSTINGS",
    "AccountRow",
    "LedgerJobProviderRow",
    "LedgerJobRow",
    "LedgerView",
    "PostingRow",
    "metered_amount",
]


@dataclass(slots=True)
class AccountRow:
    """One account's totals. Money in micros, GPU time in ms; balance = credit - debit."""

    account: str
    kind: str = ""
    owner: str = ""
    debit_micros: int = 0
    credit_micros: int = 0
    debit_gpu_ms: int = 0
    credit_gpu_ms: int = 0
    #: Usage metered against this submitter or provider, all of it and that of settled jobs only.
    metered_micros: int = 0
    metered_gpu_ms: int = 0
    settled_metered_micros: int = 0
    settled_metered_gpu_ms: int = 0
    postings: int = 0


@dataclass(slots=True)
class PostingRow:
    """One leg of a journal entry; the two legs of an entry share ``position``."""

    position: int
    leg: int
    account: str = ""
    job_id: str = ""
    debit_micros: int = 0
    credit_micros: int = 0
    gpu_ms: int = 0
    event: str = ""
    at: str = ""


@dataclass(slots=True)
class LedgerJobRow:
    """One job's bill: metered, charged and credited; ``balanced`` once settled exactly."""

    job_id: str
    submitter: str = ""
    metered_tasks: int = 0
    metered_micros: int = 0
    metered_gpu_ms: int = 0
    charged_micros: int = 0
    charged_gpu_ms: int = 0
    credited_micros: int = 0
    credited_gpu_ms: int = 0
    #: How many SubmitterCharged the job got (exactly one once settled).
    settlements: int = 0
    #: Usage metered with an amount other than ceil(gpu_ms * price / 1000).
    mispriced: int = 0
    balanced: int = 0
    #: Verified tasks: results returned and held until their verdict (not charged while held), then
    #: paid (valid: metered above) or forfeited (invalid or inconclusive: never charged, never paid).
    held_micros: int = 0
    held_gpu_ms: int = 0
    forfeited_micros: int = 0
    forfeited_gpu_ms: int = 0
    valid_results: int = 0
    invalid_results: int = 0


@dataclass(slots=True)
class LedgerJobProviderRow:
    """One provider's share of one job: metered against credited."""

    job_id: str
    provider_id: str
    metered_micros: int = 0
    metered_gpu_ms: int = 0
    credited_micros: int = 0
    credited_gpu_ms: int = 0


@dataclass(slots=True)
class HeldRow:
    """A result held in escrow until its verdict."""

    task_id: str
    lease_id: str
    job_id: str = ""
    provider_id: str = ""
    amount_micros: int = 0
    gpu_ms: int = 0


ACCOUNTS = Table.of("ledger_accounts", AccountRow, key=("account",), indexes=(("kind",),))
POSTINGS = Table.of("ledger_postings", PostingRow, key=("position", "leg"), indexes=(("account",),))
LEDGER_JOBS = Table.of("ledger_jobs", LedgerJobRow, key=("job_id",), indexes=(("submitter",),))
LEDGER_JOB_PROVIDERS = Table.of(
    "ledger_job_providers", LedgerJobProviderRow, key=("job_id", "provider_id"), indexes=(("provider_id",),)
)
LEDGER_HELD = Table.of("ledger_held", HeldRow, key=("task_id", "lease_id"), indexes=(("job_id",),))


class LedgerView(View):
    """Folds ``UsageMetered``, ``SubmitterCharged`` and ``ProviderCredited`` into double-entry books."""

    name: ClassVar[str] = "ledger"
    version: ClassVar[int] = 2
    tables: ClassVar[tuple[Table[object], ...]] = (  # type: ignore[assignment]
        ACCOUNTS,
        POSTINGS,
        LEDGER_JOBS,
        LEDGER_JOB_PROVIDERS,
        LEDGER_HELD,
    )

    def __init__(self) -> None:
        super().__init__()
        self.accounts: dict[str, AccountRow] = self.data[ACCOUNTS.name]
        self.postings: dict[tuple[int, int], PostingRow] = self.data[POSTINGS.name]
        self.jobs: dict[str, LedgerJobRow] = self.data[LEDGER_JOBS.name]
        self.shares: dict[tuple[str, str], LedgerJobProviderRow] = self.data[LEDGER_JOB_PROVIDERS.name]
        self.held: dict[tuple[str, str], HeldRow] = self.data[LEDGER_HELD.name]

    def _account(self, kind: str, owner: str) -> AccountRow:
        name = f"{kind}:{owner}"
        acc = self.accounts.get(name)
        if acc is None:
            acc = self.accounts[name] = AccountRow(name, kind, owner)
        self.dirty[ACCOUNTS.name].add(name)
        return acc

    def _job(self, job_id: str) -> LedgerJobRow:
        job = self.jobs.get(job_id)
        if job is None:
            job = self.jobs[job_id] = LedgerJobRow(job_id)
        self.dirty[LEDGER_JOBS.name].add(job_id)
        return job

    def _share(self, job_id: str, provider_id: str) -> LedgerJobProviderRow:
        key = (job_id, provider_id)
        share = self.shares.get(key)
        if share is None:
            share = self.shares[key] = LedgerJobProviderRow(job_id, provider_id)
        self.dirty[LEDGER_JOB_PROVIDERS.name].add(key)
        return share

    def _post(
        self, env: Envelope, job_id: str, debit: AccountRow, credit: AccountRow, *, micros: int, gpu_ms: int
    ) -> None:
        at = iso(env.time)
        for leg, acc, dr, cr in ((0, debit, micros, 0), (1, credit, 0, micros)):
            key = (env.sequence, leg)
            self.postings[key] = PostingRow(env.sequence, leg, acc.account, job_id, dr, cr, gpu_ms, env.type, at)
            self.dirty[POSTINGS.name].add(key)
            acc.postings += 1
        debit.debit_micros += micros
        debit.debit_gpu_ms += gpu_ms
        credit.credit_micros += micros
        credit.credit_gpu_ms += gpu_ms

    @staticmethod
    def _settle_check(job: LedgerJobRow) -> None:
        job.balanced = int(
            job.settlements == 1
            and job.mispriced == 0
            and job.charged_micros == job.metered_micros == job.credited_micros
            and job.charged_gpu_ms == job.metered_gpu_ms == job.credited_gpu_ms
        )

    def on_UsageMetered(self, e: UsageMetered, env: Envelope) -> None:
        job = self._job(e.job_id)
        job.submitter = job.submitter or e.submitter
        job.metered_tasks += 1
        job.metered_micros += e.amount_micros
        job.metered_gpu_ms += e.gpu_ms
        if e.amount_micros != metered_amount(e.gpu_ms, e.price_micros):
            job.mispriced += 1
        share = self._share(e.job_id, e.provider_id)
        share.metered_micros += e.amount_micros
        share.metered_gpu_ms += e.gpu_ms
        for acc in (self._account("submitter", e.submitter), self._account("provider", e.provider_id)):
            acc.metered_micros += e.amount_micros
            acc.metered_gpu_ms += e.gpu_ms
        self._settle_check(job)

    def on_SubmitterCharged(self, e: SubmitterCharged, env: Envelope) -> None:
        job = self._job(e.job_id)
        job.submitter = job.submitter or e.submitter
        job.settlements += 1
        job.charged_micros += e.amount_micros
        job.charged_gpu_ms += e.gpu_ms
        submitter = self._account("submitter", e.submitter)
        submitter.settled_metered_micros += job.metered_micros
        submitter.settled_metered_gpu_ms += job.metered_gpu_ms
        self._post(
            env,
            e.job_id,
            submitter,
            self._account("escrow", e.job_id),
            micros=e.amount_micros,
            gpu_ms=e.gpu_ms,
        )
        self._settle_check(job)

    def on_ProviderCredited(self, e: ProviderCredited, env: Envelope) -> None:
        job = self._job(e.job_id)
        job.credited_micros += e.amount_micros
        job.credited_gpu_ms += e.gpu_ms
        share = self._share(e.job_id, e.provider_id)
        share.credited_micros += e.amount_micros
        share.credited_gpu_ms += e.gpu_ms
        provider = self._account("provider", e.provider_id)
        provider.settled_metered_micros += share.metered_micros
        provider.settled_metered_gpu_ms += share.metered_gpu_ms
        self._post(
            env,
            e.job_id,
            self._account("escrow", e.job_id),
            provider,
            micros=e.amount_micros,
            gpu_ms=e.gpu_ms,
        )
        self._settle_check(job)

    # ---- verification escrow ----------------------------------------------------------------------

    def on_TaskResultReturned(self, e: TaskResultReturned, env: Envelope) -> None:
        job_id = job_of_task(e.task_id)
        amount = metered_amount(e.gpu_ms, e.price_micros)
        key = (e.task_id, e.lease_id)
        self.held[key] = HeldRow(e.task_id, e.lease_id, job_id, e.provider_id, amount, e.gpu_ms)
        self.dirty[LEDGER_HELD.name].add(key)
        job = self._job(job_id)
        job.held_micros += amount
        job.held_gpu_ms += e.gpu_ms

    def on_TaskResultJudged(self, e: TaskResultJudged, env: Envelope) -> None:
        key = (e.task_id, e.lease_id)
        held = self.held.pop(key, None)
        if held is None:
            return  # judged twice, or never returned: the audit reports it
        self.dirty[LEDGER_HELD.name].add(key)
        job = self._job(held.job_id)
        job.held_micros -= held.amount_micros
        job.held_gpu_ms -= held.gpu_ms
        if e.verdict == "valid":
            job.valid_results += 1
        else:
            job.invalid_results += e.verdict == "invalid"
            job.forfeited_micros += held.amount_micros
            job.forfeited_gpu_ms += held.gpu_ms
