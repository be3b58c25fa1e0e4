"""The ``gpufleet`` command line: run a network, submit and follow jobs, run providers, audit the log.

Bad input of any kind (a bad job file, an unknown workload, invalid parameters, a server that
cannot be reached, an unknown job id) prints one line that names the problem and exits non-zero:
never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
import tempfile
from collections.abc import AsyncIterator, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from events import GpufleetError, InvalidPayload
from events.types import MAX_PRICE_MICROS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)
T = TypeVar("T")

ACCEPT_CODE_HELP = (
    "Whose code this provider runs, sandboxed with bubblewrap: none (the default), any, "
    "or submitter names separated by commas."
)

NatsOpt = Annotated[
    str | None,
    typer.Option("--nats", help="NATS server or cluster URL (default: the network `gpufleet up` runs)."),
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Where `up` keeps its log and read models (~/.gpufleet).")
]
CredsOpt = Annotated[
    Path | None,
    typer.Option(
        "--creds",
        help="Your NATS credentials file (or $GPUFLEET_CREDS); on the machine running `gpufleet up`, its own.",
    ),
]
NotaryKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--notary-key",
        help="The notary key to trust (text or file; default: $GPUFLEET_NOTARY_KEY, else this machine's network's).",
    ),
]
TlsCaOpt = Annotated[
    Path | None, typer.Option("--tls-ca", help="The CA of the network's TLS certificate (or $GPUFLEET_TLS_CA).")
]
MetricsOpt = Annotated[
    str | None,
    typer.Option(
        "--metrics",
        metavar="HOST:PORT",
        help="Serve Prometheus metrics at http://HOST:PORT/metrics (a PORT alone: on 127.0.0.1 only).",
    ),
]
QuotaOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--quota",
        metavar="[SUBMITTER.]LIMIT=VALUE",
        help="A submitter quota (repeatable): jobs_in_flight, tasks_queued, tasks_running, intake_per_s, "
        "intake_burst or object_bytes; for every submitter, or one (alice.tasks_running=64).",
    ),
]
QuotasFileOpt = Annotated[
    Path | None,
    typer.Option("--quotas", help="Quotas from a TOML file: a [default] table and [submitters.NAME] tables."),
]
TaskWindowOpt = Annotated[
    int,
    typer.Option(
        "--task-window", min=1, max=1_000_000, help="Tasks of one submitter that exist and wait to be leased at once."
    ),
]


def _quotas(settings: list[str] | None, file: Path | None) -> Any:
    """``--quota``/``--quotas`` checked before anything starts: one line naming what is wrong."""
    from events.errors import InvalidPayload
    from events.quotas import QuotaConfig

    try:
        return QuotaConfig.parse(settings or [], file)
    except InvalidPayload as e:
        _fail(str(e))


def _metrics_listen(text: str | None) -> tuple[str, int] | None:
    """``--metrics`` checked before anything starts: one line naming what is wrong."""
    from gpufleet.metrics import parse_listen

    if text is None:
        return None
    try:
        return parse_listen(text)
    except GpufleetError as e:
        _fail(str(e))
    raise AssertionError("unreachable")


async def _serve_metrics(listen: tuple[str, int] | None, **parts: Any) -> Any:
    """With ``--metrics``: serve ``/metrics`` for ``parts`` (``gpufleet.metrics.registry_for``) on this
    event loop; the server to close, or None."""
    if listen is None:
        return None
    from gpufleet.metrics import registry_for, serve_metrics

    server = await serve_metrics(*listen, registry_for(**parts))
    console.print(f"metrics at {server.url}", highlight=False)
    return server


def _fail(message: str, code: int = 1) -> None:
    """One line, no traceback, non-zero exit."""
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; turn every expected failure into one line and an exit code."""
    import yaml

    try:
        return asyncio.run(coro)
    except GpufleetError as e:
        _fail(str(e))
    except yaml.YAMLError as e:
        _fail(f"not valid YAML: {str(e).splitlines()[0]}")
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        _fail(f"{e.strerror}: {e.filename}")
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except TimeoutError:
        _fail("timed out")
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _one_line() -> Iterator[None]:
    """For commands that run no coroutine: expected failures become one line and an exit code."""
    try:
        yield
    except GpufleetError as e:
        _fail(str(e))
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        _fail(f"{e.strerror}: {e.filename}")


def _url(nats_url: str | None, data_dir: Path | None = None) -> str:
    from gpufleet.network import discover_url

    return nats_url or discover_url(data_dir)


def _access(
    role: str, nats_url: str | None, creds: Path | None, tls_ca: Path | None, data_dir: Path | None = None
) -> Any:
    """How this command reaches the network, and as whom (see ``gpufleet.network.discover_access``)."""
    from gpufleet.network import discover_access

    return discover_access(role, url=nats_url, creds=creds, tls_ca=tls_ca, data_dir=data_dir)


async def _client(role: str, nats_url: str | None, creds: Path | None, tls_ca: Path | None) -> Any:
    from gpufleet.client import Client

    a = _access(role, nats_url, creds, tls_ca)
    return await Client.connect(a.url, creds=a.creds, tls_ca=a.tls_ca)


@app.callback()
def _root(
    log_format: Annotated[str, typer.Option(help="Logs: auto, console or json.")] = "auto",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "warning",
) -> None:
    """gpufleet: rent GPU compute across many independent providers."""
    from gpufleet.logging import configure_logging

    if log_format not in ("auto", "console", "json"):
        _fail(f"--log-format must be auto, console or json, not {log_format!r}")
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        _fail(f"--log-level must be debug, info, warning or error, not {log_level!r}")
    configure_logging(log_format, log_level)  # type: ignore[arg-type]


# ---- the network ---------------------------------------------------------------------------------


@app.command()
def up(
    data_dir: DataDirOpt = None,
    nats_url: Annotated[
        str | None, typer.Option("--nats", help="Use this server or cluster instead of an embedded one.")
    ] = None,
    provider: Annotated[bool, typer.Option(help="Run a local provider on this machine's GPU (or CPU).")] = True,
    backend: Annotated[str, typer.Option(help="The local provider's backend: auto, cuda or cpu.")] = "auto",
    slots: Annotated[int | None, typer.Option(help="The local provider's worker processes.")] = None,
    price_micros: Annotated[
        int, typer.Option(min=0, max=MAX_PRICE_MICROS, help="The local provider's price, micro-credits per GPU-s.")
    ] = 0,
    port: Annotated[int | None, typer.Option(help="The embedded server's port (default 4222 if free; 0: any).")] = None,
    host: Annotated[
        str, typer.Option(help="Listen on this address: 127.0.0.1 (this machine) or 0.0.0.0 (others, with --tls).")
    ] = "127.0.0.1",
    tls: Annotated[bool, typer.Option(help="Serve TLS (a CA and certificate are made in the data directory).")] = False,
    tls_cert: Annotated[Path | None, typer.Option(help="Your own server certificate (PEM), with --tls.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key (PEM).")] = None,
    tls_host: Annotated[
        list[str] | None, typer.Option(help="A name or IP other machines use to reach this one (repeatable).")
    ] = None,
    cluster: Annotated[
        int,
        typer.Option(
            help="Run N nats-servers here as one JetStream cluster, every stream with N replicas (odd: 1, 3, 5)."
        ),
    ] = 1,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Keep the read models here: postgresql://USER@HOST/DB[?schema=NAME], or a SQLite file "
            "(default: readmodels.sqlite in the data directory).",
        ),
    ] = None,
    dashboard: Annotated[
        bool, typer.Option(help="Serve the web dashboard on 127.0.0.1 (read-only; its URL is printed).")
    ] = True,
    dashboard_port: Annotated[
        int | None, typer.Option(help="The dashboard's port (default 8222 if free, else any; 0: any).")
    ] = None,
    accept_code: Annotated[
        str | None,
        typer.Option(
            help="Whose code the local provider runs, sandboxed: none, any, or names "
            "(default: your own submitter's, and nobody else's)."
        ),
    ] = None,
    unsafe_trusted_code: Annotated[
        bool, typer.Option(help="Without bubblewrap, let the local provider run that code unsandboxed.")
    ] = False,
    metrics: MetricsOpt = None,
    quota: QuotaOpt = None,
    quotas: QuotasFileOpt = None,
    task_window: TaskWindowOpt = 1_000,
) -> None:
    """Run the whole network here, secured: nats-server with JetStream, orchestrator, projections, a provider.

    Only identities with credentials this network issued may connect (`gpufleet creds issue`).
    Ctrl-C or SIGTERM stops everything; a later `up` on the same data directory resumes from the same log.
    """
    from actors.orchestrator import OrchestratorConfig
    from gpufleet.cluster import ClusterError, check_cluster_size
    from gpufleet.network import DEFAULT_DATA_DIR, LocalNetwork, NetworkConfig

    try:
        check_cluster_size(cluster)
    except ClusterError as e:
        _fail(str(e))
    if cluster > 1 and nats_url is not None:
        _fail("--cluster runs a cluster here; --nats uses an existing one: choose one")
    if (tls_cert is None) != (tls_key is None):
        _fail("--tls-cert and --tls-key go together")
    if host not in ("127.0.0.1", "localhost", "::1") and not (tls or tls_cert):
        _fail(f"listening on {host} exposes the network beyond this machine: add --tls")
    code_from: tuple[str, ...] | None = None
    if accept_code is not None:
        from gpu_runtime.packages import AcceptCodeError, parse_accept_code

        try:
            code_from = parse_accept_code(accept_code)
        except AcceptCodeError as e:
            _fail(str(e))
    cfg = NetworkConfig(
        data_dir=data_dir or DEFAULT_DATA_DIR,
        nats_url=nats_url,
        provider=provider,
        provider_backend=backend,
        provider_slots=slots,
        provider_price_micros=price_micros,
        provider_accept_code=code_from,
        provider_unsafe_code=unsafe_trusted_code,
        port=port,
        host=host,
        tls=tls or tls_cert is not None,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_hosts=list(tls_host or []),
        cluster=cluster,
        db=db,
        dashboard=dashboard,
        dashboard_port=dashboard_port,
        metrics=_metrics_listen(metrics),
        orchestrator=OrchestratorConfig(quotas=_quotas(quota, quotas), task_window=task_window),
    )

    async def run() -> None:
        from gpufleet.lifecycle import graceful_shutdown

        # SIGTERM (systemd, Docker, a supervisor) stops as cleanly as Ctrl-C: every part in order,
        # nats-server last. (A SIGKILL leaves no orphan either: the children die with this process.)
        async with graceful_shutdown() as shutdown:
            net = LocalNetwork(cfg)
            with console.status("starting the network..."):
                await net.start()  # a second `up` on the data directory is refused here, in one line
            orch = net.orchestrator
            assert orch is not None
            try:
                if not shutdown.requested.is_set():
                    _print_network(net)
                await shutdown.until(orch.halted.wait())
            finally:
                with console.status("stopping..."):
                    await net.stop()
        if orch.fatal is not None:
            raise orch.fatal  # the log was lost under the running network: one line, non-zero
        console.print("stopped; `gpufleet up` resumes from the same log")

    try:
        _run(run())
    except typer.Exit as e:
        if e.exit_code == 130:
            console.print("stopped; `gpufleet up` resumes from the same log")
            return
        raise


def _print_network(net: Any) -> None:
    from gpufleet.tables import device_text

    # No frame: it costs columns an 80-column terminal cannot spare (the command to try stays on one line).
    t = Table(title="gpufleet is up", title_justify="left", show_header=False, box=None, padding=(0, 2, 0, 0))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    if net.cluster is not None:
        t.add_row("NATS", f"a {net.cluster.size}-node JetStream cluster (embedded), every stream R{net.cluster.size}:")
        for node in net.cluster.nodes:
            t.add_row(f"  {node.name}", f"{node.url}  (routes on :{node.cluster_port}, store {node.store_dir})")
    else:
        t.add_row("NATS", net.url + ("  (embedded, store " + str(net.server.store_dir) + ")" if net.server else ""))
    t.add_row("security", "credentials required" + (f"; TLS, CA {net.tls_ca}" if net.tls_ca else ""))
    t.add_row("credentials", "gpufleet creds issue submitter NAME --out NAME.creds")
    orch = net.orchestrator
    jobs = len(orch.world.jobs) + orch.world.retired_jobs
    t.add_row("orchestrator", f"log position {orch.world.position}, {jobs} jobs so far")
    if net.projector is not None:
        from projections.storage import describe_db

        t.add_row("projections", describe_db(net.read_models_db))
    if getattr(net, "dashboard", None) is not None:
        t.add_row("dashboard", f"{net.dashboard.url}  (this machine only; read-only)")
    if net.metrics_server is not None:
        t.add_row("metrics", f"{net.metrics_server.url}  (Prometheus)")
    elif getattr(net, "dashboard", None) is not None:
        t.add_row("metrics", f"{net.dashboard.url.rstrip('/')}/metrics  (Prometheus)")
    p = net.provider
    if p is not None and p.capabilities is not None:
        caps = p.capabilities
        device = device_text(caps.backend, caps.gpu_model, width=40)
        t.add_row("provider", f"{p.provider_id}: {device}, {caps.slots} slot(s)")
    t.add_row("try", "gpufleet submit --workload montecarlo -p samples=1000000 --watch")
    console.print(t)
    console.print("Ctrl-C to stop.")


@app.command()
def demo(
    data_dir: DataDirOpt = None,
    backend: Annotated[str, typer.Option(help="The local provider's backend: auto, cuda or cpu.")] = "auto",
) -> None:
    """Bring a network up, run a mix of sample jobs with live progress, then show results and the audit."""
    from gpufleet.demo import run_demo

    _run(run_demo(data_dir or Path(tempfile.mkdtemp(prefix="gpufleet-demo-")), console, backend=backend))


# ---- jobs ----------------------------------------------------------------------------------------


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _job_spec(
    file: Path | None,
    workload: str | None,
    params: list[str],
    tasks: int | None,
    max_price: int | None,
    deadline_in: float | None,
    backend: str | None,
    priority: int | None,
    verify: str | None = None,
    replicas: int | None = None,
) -> dict[str, Any]:
    import yaml

    spec: dict[str, Any] = {}
    if file is not None:
        text = sys.stdin.read() if str(file) == "-" else file.read_text()
        loaded = yaml.safe_load(text)  # JSON is YAML too
        if not isinstance(loaded, dict):
            raise InvalidPayload("a job file must hold one mapping (a JSON object)", field="file")
        spec = loaded
    if workload:
        spec["workload"] = workload
    for p in params:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise InvalidPayload(f"--param must look like name=value, not {p!r}", field="param")
        spec.setdefault("params", {})[key] = _parse_value(value)
    if tasks is not None:
        spec["split"] = {"kind": "count", "count": tasks}
    if max_price is not None:
        spec["max_price_micros"] = max_price
    if deadline_in is not None:
        spec["deadline"] = (datetime.now(UTC) + timedelta(seconds=deadline_in)).isoformat()
    if backend:
        spec.setdefault("resources", {})["backend"] = backend
    if priority is not None:
        spec["priority"] = priority
    if verify is not None or replicas is not None:
        policy = spec.setdefault("verify", {})
        if not isinstance(policy, dict):
            raise InvalidPayload("verify must be a mapping", field="verify")
        if verify is not None:
            policy["mode"] = verify
        if replicas is not None:
            policy.update(replicas=replicas, quorum=min(replicas, int(policy.get("quorum", 2))))
            policy["max_replicas"] = max(replicas, int(policy.get("max_replicas", 4)))
    if "workload" not in spec:
        raise InvalidPayload("give a job file or --workload", field="workload")
    return spec


# A job spec from a file or flags: the options `submit` and `quote` share.
JobFileArg = Annotated[Path | None, typer.Argument(help="Job file, YAML or JSON ('-' for stdin).")]
WorkloadOpt = Annotated[str | None, typer.Option(help="Workload name (instead of, or over, the file).")]
ParamOpt = Annotated[list[str] | None, typer.Option("--param", "-p", help="name=value (JSON value).")]
TasksOpt = Annotated[int | None, typer.Option(help="Split into this many identical tasks.")]
MaxPriceOpt = Annotated[
    int | None, typer.Option(min=0, max=MAX_PRICE_MICROS, help="Price ceiling, micro-credits per GPU-second.")
]
DeadlineInOpt = Annotated[float | None, typer.Option(help="Deadline, seconds from now.")]
BackendOpt = Annotated[str | None, typer.Option(help="Required backend: cuda or any.")]
PriorityOpt = Annotated[int | None, typer.Option(help="0 (low) to 9 (high).")]
VerifyOpt = Annotated[
    str | None,
    typer.Option(help="Result verification: auto (default: spot checks when paid), none, spot or replicate."),
]
ReplicasOpt = Annotated[int | None, typer.Option(min=1, max=8, help="With --verify replicate: providers per task.")]


@app.command()
def submit(
    file: JobFileArg = None,
    workload: WorkloadOpt = None,
    param: ParamOpt = None,
    tasks: TasksOpt = None,
    max_price: MaxPriceOpt = None,
    deadline_in: DeadlineInOpt = None,
    backend: BackendOpt = None,
    priority: PriorityOpt = None,
    verify: VerifyOpt = None,
    replicas: ReplicasOpt = None,
    job_id: Annotated[str | None, typer.Option(help="Choose the job's name (a retry with it is a no-op).")] = None,
    watch_: Annotated[bool, typer.Option("--watch", "-w", help="Follow the job to the end.")] = False,
    max_eta: Annotated[
        float | None,
        typer.Option(min=0.0, help="Quote first; submit nothing if it should take longer (seconds, to its end)."),
    ] = None,
    max_cost: Annotated[
        float | None, typer.Option(min=0.0, help="Quote first; submit nothing if it should cost more (credits).")
    ] = None,
    nats_url: NatsOpt = None,
    creds: CredsOpt = None,
    tls_ca: TlsCaOpt = None,
) -> None:
    """Submit a job from a file or from flags, as the submitter your credentials name; prints the job id.

    With --max-eta or --max-cost, the network quotes it first (`gpufleet quote`), and nothing is
    submitted when the quote's expected finish or cost is over the limit, or nothing can run it."""
    from gpufleet.watch import watch_jobs

    spec = None

    async def run() -> None:
        nonlocal spec
        spec = _job_spec(
            file, workload, param or [], tasks, max_price, deadline_in, backend, priority, verify, replicas
        )
        _verification_notice(spec)
        async with await _client("submitter", nats_url, creds, tls_ca) as client:
            if max_eta is not None or max_cost is not None:
                q = await client.quote(spec)
                over = _over_limits(q, max_eta, max_cost)
                if over:
                    _fail(f"not submitted: {over}")
                if max_cost is not None and spec.get("max_price_micros") is None:
                    # A limit, not only a look: a provider that raises its price after the quote must not
                    # bill past it, so the job gets the price ceiling that keeps the quoted GPU time in it.
                    spec["max_price_micros"] = _ceiling_for(q, max_cost)
                    console.print(
                        f"price ceiling {spec['max_price_micros']} micro-credits per GPU-second (from --max-cost)",
                        highlight=False,
                    )
            job = await client.submit(spec, job_id=job_id)
            console.print(job.id, highlight=False)
            if watch_:
                (st,) = await watch_jobs([job], console)
                _print_outcome(st)
                if st.status != "completed":
                    raise typer.Exit(1)

    _run(run())


def _ceiling_for(q: Any, max_cost: float) -> int:
    """The price per GPU-second at which the quote's expected GPU time costs ``max_cost`` credits."""
    per_task = getattr(q, "per_task", None)
    gpu_s = per_task.seconds * q.runs * q.tasks if per_task is not None else 0.0
    if gpu_s <= 0.0 and q.finish_s is not None:
        gpu_s = q.finish_s.expected  # at least the job's wall time on one slot
    ceiling = max_cost * 1e6 / max(gpu_s, 1e-3)
    return int(min(ceiling, MAX_PRICE_MICROS))


def _over_limits(q: Any, max_eta: float | None, max_cost: float | None) -> str | None:
    """Why a quote is over the submitter's limits (one line), or None."""
    if not q.runnable:
        return "nothing can run it now: " + "; ".join(f"{k}: {v}" for k, v in q.why.items())
    if max_eta is not None and q.finish_s is not None and q.finish_s.expected > max_eta:
        return (
            f"it should take {_seconds(q.finish_s.expected)} to finish "
            f"({_seconds(q.finish_s.low)} to {_seconds(q.finish_s.high)}), over --max-eta {_seconds(max_eta)}"
        )
    if max_cost is not None and q.cost_micros is not None and q.cost_micros.expected > max_cost * 1e6:
        return (
            f"it should cost {q.cost_micros.expected / 1e6:.6f} credits "
            f"({q.cost_micros.low / 1e6:.6f} to {q.cost_micros.high / 1e6:.6f}), over --max-cost {max_cost:g}"
        )
    return None


def _seconds(s: float | None) -> str:
    if s is None:
        return "?"
    if s < 100:
        return f"{s:.3g} s"
    if s < 6000:
        return f"{s / 60:.3g} min"
    return f"{s / 3600:.3g} h"


def _span_s(expected: float, low: float, high: float) -> str:
    """ "1.2 s (0.9-1.6)" (an en dash): the unit of the expected value for all three."""
    units = (("ms", 1e-3, 1.0), ("s", 1.0, 100.0), ("min", 60.0, 6000.0))
    unit, div = next(((u, d) for u, d, below in units if expected < below), ("h", 3600.0))
    return f"{_num(expected / div, 3)} {unit} ({_num(low / div)}\u2013{_num(high / div)})"


def _num(x: float, digits: int = 2) -> str:
    """``x`` to about ``digits`` significant digits, never in scientific notation: 0.66, 2.2, 176."""
    return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:.0f}"


def _credits(span: Any) -> str:
    if span.high == 0:
        return "free"
    return f"{span.expected / 1e6:.6f} ({span.low / 1e6:.6g}\u2013{span.high / 1e6:.6g})"


def _print_quote(q: Any) -> None:
    """The quote as a table of capable device classes, then the job's line (or why nothing can run it)."""
    from rich.markup import escape

    if not q.runnable:
        console.print(f"nothing can run this {q.workload} job now ({q.online} provider(s) online):", highlight=False)
        for requirement, why in q.why.items():
            console.print(f"  {requirement}: {escape(why)}", highlight=False)
        return
    from gpufleet.tables import device_text, narrow_table

    t = narrow_table(f"quote: {q.tasks} {q.workload} task(s) for {q.submitter}")
    for col in ("class", "providers", "per task", "credits", "starts", "finishes"):
        t.add_column(col, no_wrap=col in ("class", "starts"), overflow="fold")
    for o in q.options:
        p = o.per_task
        runs = f" x{o.runs:g}" if o.runs != 1 else ""
        backend, _, model = o.device_class.partition(":")
        shown = o.providers[:2]
        more = f" +{len(o.providers) - len(shown)}" if len(o.providers) > len(shown) else ""
        t.add_row(
            escape(device_text(backend, model)),
            escape(", ".join(f"{x.provider_id} {x.free}/{x.slots}" for x in shown) + more),
            escape(f"{_span_s(p.seconds, p.low, p.high)}{runs} {p.basis}"),
            _credits(o.cost_micros),
            f"in {_seconds(o.start_s)}",
            f"in {_span_s(o.finish_s.expected, o.finish_s.low, o.finish_s.high)}",
        )
    console.print(t)
    f = q.finish_s
    runs = f"; {q.runs:g} runs per task (verification)" if q.runs != 1 else ""
    console.print(
        f"the job, on all {q.slots} capable slot(s), {q.ahead} task(s) ahead of it: "
        f"starts in {_seconds(q.start_s)}, finishes in {_span_s(f.expected, f.low, f.high)}, "
        + (f"costs {_credits(q.cost_micros)} credits" if q.cost_micros.high else "free")
        + runs,
        highlight=False,
    )
    for requirement, why in q.why.items():
        console.print(f"ruled out by {requirement}: {escape(why)}", highlight=False)


@app.command()
def quote(
    file: JobFileArg = None,
    workload: WorkloadOpt = None,
    param: ParamOpt = None,
    tasks: TasksOpt = None,
    max_price: MaxPriceOpt = None,
    deadline_in: DeadlineInOpt = None,
    backend: BackendOpt = None,
    priority: PriorityOpt = None,
    verify: VerifyOpt = None,
    replicas: ReplicasOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the quote as JSON.")] = False,
    nats_url: NatsOpt = None,
    creds: CredsOpt = None,
    tls_ca: TlsCaOpt = None,
) -> None:
    """Before submitting: what could run a job now, how long each task and the whole job should take
    (with p10-p90 intervals), what it should cost, or why nothing can run it. Submits nothing."""

    async def run() -> None:
        spec = _job_spec(
            file, workload, param or [], tasks, max_price, deadline_in, backend, priority, verify, replicas
        )
        async with await _client("submitter", nats_url, creds, tls_ca) as client:
            q = await client.quote(spec)
        if as_json:
            print(json.dumps(q.to_json(), indent=2))
        else:
            _print_quote(q)

    _run(run())


def _verification_notice(spec: dict[str, Any]) -> None:
    """Before submitting: what verification will cost (replicas are paid, and run one after another)."""
    from events.verification import VerifyPolicy, expected_replicas
    from events.workloads import WORKLOADS

    c = WORKLOADS.get(str(spec.get("workload")))
    raw = spec.get("verify")
    if not isinstance(raw, dict):
        return  # the network's default: ``gpufleet jobs`` shows what it was
    try:
        policy = VerifyPolicy.model_validate(raw)
    except ValueError:
        return  # the network refuses it, naming the field
    if c is None or c.compare == "none" or policy.mode == "none":
        return
    if policy.mode == "replicate":
        n = expected_replicas(policy, True, c.compare)
        err.print(
            f"verify: replicate: each task runs on {n:.0f} providers of different owners, one after another: "
            f"about {n:.0f}x the cost and the time of an unverified task (more if results disagree)",
            highlight=False,
        )
    else:
        new, trusted = expected_replicas(policy, True, c.compare), expected_replicas(policy, True, c.compare, 1.0)
        err.print(
            f"verify: {policy.mode}: paid results are spot-checked on a second provider: up to {new:.1f}x the cost "
            f"and time on providers not yet trusted, about {trusted:.1f}x on trusted ones; free results are not",
            highlight=False,
        )


def _print_outcome(st: Any) -> None:
    style = "green" if st.status == "completed" else "red"
    reason = f": {st.reason}" if st.reason else ""
    field = f" ({st.field})" if st.field else ""
    console.print(f"job {st.job_id} [{style}]{st.status}[/]{field}{reason}", highlight=False)


@app.command()
def watch(
    job_id: Annotated[str, typer.Argument(help="The job id (or your job's name).")],
    nats_url: NatsOpt = None,
    creds: CredsOpt = None,
    tls_ca: TlsCaOpt = None,
) -> None:
    """Follow a job live, with a bar per task and an ETA, until it ends (reconnects if the link drops)."""
    from gpufleet.watch import watch_jobs

    async def run() -> None:
        async with await _client("submitter", nats_url, creds, tls_ca) as client:
            job = client.job(job_id)
            await job.status()  # unknown id: one clear line, now
            (st,) = await watch_jobs([job], console)
            _print_outcome(st)
            if st.status != "completed":
                raise typer.Exit(1)

    _run(run())


@app.command()
def status(
    job_id: Annotated[str, typer.Argument(help="The job id (or your job's name).")],
    nats_url: NatsOpt = None,
    creds: CredsOpt = None,
    tls_ca: TlsCaOpt = None,
) -> None:
    """A job's state, tasks, providers, ETA and cost, from the log."""

    async def run() -> None:
        from events.types import utc_now
        from gpufleet.eta import job_text
        from gpufleet.tables import job_table

        async with await _client("submitter", nats_url, creds, tls_ca) as client:
            st = await client.job(job_id).status()
            quota = await _quota_or_none(client)
        now = utc_now()
        console.print(job_table(st, now))
        if st.not_created:
            console.print(
                f"{st.not_created:,} more task(s) not created yet: they come into existence as your earlier "
                "ones are leased",
                highlight=False,
            )
        console.print(
            f"{st.workload}, submitter {st.submitter}, {st.count('completed')}/{st.task_count} done, "
            f"cost {st.cost_micros / 1e6:.6f} credits",
            highlight=False,
        )
        when = job_text(st, now)
        if when:
            console.print(when, highlight=False)
        if st.reason:
            console.print(f"reason: {st.reason}" + (f" ({st.field})" if st.field else ""), highlight=False)
        if quota is not None:
            console.print(_quota_line(quota), highlight=False)

    _run(run())


async def _quota_or_none(client: Any) -> dict[str, Any] | None:
    """The asker's quotas and usage, or None when the orchestrator does not answer in time."""
    from events.errors import GpufleetError

    try:
        doc: dict[str, Any] = await client.quota(timeout=3.0)
        return doc
    except GpufleetError:
        return None


def _quota_line(doc: dict[str, Any]) -> str:
    """``quotas: 3 of 1,000 jobs in flight, 120 of 10,000,000 tasks queued, ...`` in one line."""
    limits, usage = doc.get("limits", {}), doc.get("usage", {})
    parts = [
        f"{usage.get(k, 0):,} of {limits.get(k, 0):,} {what}"
        for k, what in (
            ("jobs_in_flight", "jobs in flight"),
            ("tasks_queued", "tasks queued"),
            ("tasks_running", "tasks running"),
        )
    ]
    return "quotas: " + ", ".join(parts) + " (gpufleet quota: all of them)"


@app.command()
def quota(
    all_: Annotated[
        bool, typer.Option("--all", help="Every busy submitter's usage and limits (with auditor credentials).")
    ] = False,
    nats_url: NatsOpt = None,
    creds: CredsOpt = None,
    tls_ca: TlsCaOpt = None,
) -> None:
    """Your quotas and what you use of them now; over a limit, a submission is refused naming it."""

    async def run() -> None:
        from gpufleet.tables import quota_table

        async with await _client("auditor" if all_ else "submitter", nats_url, creds, tls_ca) as client:
            doc = await client.quota()
        console.print(quota_table(doc))

    _run(run())


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the log).")] = "",
    nats_url: NatsOpt = None,
    creds: CredsOpt = None,
    tls_ca: TlsCaOpt = None,
) -> None:
    """Cancel one of your jobs; its running tasks are stopped on their providers."""

    async def run() -> None:
        async with await _client("submitter", nats_url, creds, tls_ca) as client:
            await client.job(job_id).cancel(reason or "cancelled from the command line")
        console.print(f"cancellation of {job_id} sent")

    _run(run())


@app.command()
def result(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the results here.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Wait at most this many seconds.")] = None,
    nats_url: NatsOpt = None,
    creds: CredsOpt = None,
    tls_ca: TlsCaOpt = None,
) -> None:
    """Wait for a job and print or save its results; every digest is verified against the log."""

    async def run() -> None:
        async with await _client("submitter", nats_url, creds, tls_ca) as client:
            results = await client.job(job_id).result(timeout)
        if out is None:
            for r in results:
                shown = r.value if r.value is not None else f"<{r.size} bytes in {r.object_name}>"
                console.print(f"{r.task_id}: {json.dumps(shown) if r.value is not None else shown}", highlight=False)
            return
        if len(results) == 1 and results[0].data is not None and results[0].value is None:
            out.write_bytes(results[0].data)
        else:
            doc = [
                {"task": r.task_id, "index": r.index, "sha256": r.sha256, "value": r.value, "object": r.object_name}
                for r in results
            ]
            out.write_text(json.dumps(doc, indent=2) + "\n")
        console.print(f"{len(results)} result(s) written to {out} (sha256 verified)")

    _run(run())


async def _read_models(access: Any, data_dir: Path | None) -> Any:
    """Read models for queries: those of the local `up` if it runs, else a private cache caught up now
    (which needs credentials that may read the whole log: an auditor's)."""
    from events.store import JetStreamEventStore
    from gpufleet.network import DEFAULT_DATA_DIR, _alive, _read_info
    from projections.projector import Projector
    from projections.query import ReadModels
    from projections.storage import SqliteStore

    url = access.url
    home = data_dir or DEFAULT_DATA_DIR
    info = _read_info(home)
    live = home / "readmodels.sqlite"
    if info and info.get("url") == url and _alive(int(info.get("pid", 0))):
        if info.get("db"):  # `up --db postgresql://...`: its shared read models
            return ReadModels.open(str(info["db"]))
        if live.exists():
            return ReadModels.open(live)
    home.mkdir(parents=True, exist_ok=True)
    cache = home / f"cache-{hashlib.sha1(url.encode()).hexdigest()[:10]}.sqlite"
    store = await JetStreamEventStore.connect(access, name="gpufleet-cli", reads="direct")
    db = SqliteStore(str(cache))
    try:
        projector = Projector(store, db)
        projector.open()
        with console.status("catching up with the log..."):
            await projector.catch_up()
    finally:
        await store.close()
        db.close()
    return ReadModels.open(cache)


@app.command()
def jobs(
    status_: Annotated[str | None, typer.Option("--status", help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    nats_url: NatsOpt = None,
    data_dir: DataDirOpt = None,
    creds: CredsOpt = None,
    tls_ca: TlsCaOpt = None,
) -> None:
    """Jobs, newest first: status, progress, ETA and cost (the whole network: an operator's or auditor's view)."""

    async def run() -> None:
        from gpufleet.tables import jobs_table, quota_table, refusals

        models = await _read_models(_access("auditor", nats_url, creds, tls_ca, data_dir), data_dir)
        try:
            rows = await models.list_jobs(status_, limit=limit)
            etas = {r.job_id: await models.eta(r.job_id) for r in rows}
        finally:
            models.close()
        now = datetime.now(UTC).timestamp()
        console.print(jobs_table(rows, etas, now, console.width))
        for line in refusals(rows):
            console.print(f"rejected {line}", highlight=False, markup=False)
        with contextlib.suppress(Exception):  # the quotas are the orchestrator's: shown when it answers
            async with await _client("auditor", nats_url, creds, tls_ca) as client:
                quotas = await _quota_or_none(client)
            if quotas is not None:
                console.print(quota_table(quotas))

    _run(run())


@app.command()
def providers(
    nats_url: NatsOpt = None, data_dir: DataDirOpt = None, creds: CredsOpt = None, tls_ca: TlsCaOpt = None
) -> None:
    """The fleet: verified identity, capability, state, utilisation, reputation, earnings."""

    async def run() -> None:
        models = await _read_models(_access("auditor", nats_url, creds, tls_ca, data_dir), data_dir)
        try:
            rows = await models.fleet()
        finally:
            models.close()
        from gpufleet.tables import fleet_table

        console.print(fleet_table(rows, console.width))

    _run(run())


@app.command()
def replay(
    audit: Annotated[bool, typer.Option("--audit", help="Also audit the log and print the report.")] = False,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Rebuild into this SQLite file or postgresql://USER@HOST/DB[?schema=NAME] (default: a temporary one).",
        ),
    ] = None,
    nats_url: NatsOpt = None,
    creds: CredsOpt = None,
    tls_ca: TlsCaOpt = None,
    notary_key: NotaryKeyOpt = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="A stopped network's data directory: serve its store here for the replay (no network needed).",
        ),
    ] = None,
) -> None:
    """Rebuild every read model from position 0 of the log; with --audit, check the network kept its rules.

    With --data-dir, it works on a stopped network's store by itself (a private nats-server, stopped after).
    """
    from events.store import JetStreamEventStore
    from gpufleet.audit import full_audit
    from projections.projector import Projector
    from projections.query import ReadModels
    from projections.storage import describe_db, open_store

    if data_dir is not None and (nats_url or creds):
        _fail("--data-dir serves a stopped network's store here; --nats and --creds reach a running one: choose one")

    async def run() -> None:
        # As an auditor: it reads every stream and bucket, and can write nothing.
        async with _auditor_of(data_dir, nats_url, creds, tls_ca) as access:
            await replay_on(access)

    async def replay_on(access: Any) -> None:
        store = await JetStreamEventStore.connect(access, name="gpufleet-replay", reads="direct")
        target = db or str(Path(tempfile.mkdtemp(prefix="gpufleet-replay-")) / "readmodels.sqlite")
        try:
            sqlite = open_store(target)
        except BaseException:
            await store.close()
            raise
        try:
            projector = Projector(store, sqlite)
            projector.open()
            with console.status("replaying the log..."):
                position = await projector.rebuild()
            models = ReadModels(sqlite)
            books = await models.balances()
            err = await models.eta_error()
            console.print(
                f"rebuilt every read model from {projector.applied} events (log position {position}) "
                f"into {describe_db(target)}",
                highlight=False,
            )
            console.print(f"books balance: {'yes' if books.balanced else 'NO: ' + '; '.join(books.problems[:3])}")
            skipped = await models.quarantined()
            if skipped:
                console.print(f"[red]quarantined {len(skipped)} stored event(s)[/], skipped by the read models:")
                for r in skipped[:10]:
                    where = f" ({r.field})" if r.field else ""
                    # Stored text, not ours: printed as is, never read as rich markup.
                    console.print(
                        f"  position {r.position}, view {r.view}{where}: {r.reason}", highlight=False, markup=False
                    )
            if err.n:
                console.print(f"ETA error over {err.n} tasks: median {err.median:.1%}, p90 {err.p90:.1%}")
            if audit:
                with console.status("auditing the log, and re-deciding every decision from its cause..."):
                    report, provenance = await full_audit(store)
                console.print(provenance.summary(), highlight=False)
                console.print(report.render(), highlight=False, markup=False)
                signed_ok = await _audit_signed_checkpoints(store, notary_key, data_dir)
                if not report.ok or not signed_ok:
                    raise typer.Exit(1)
        finally:
            await store.close()
            sqlite.close()

    _run(run())


@contextlib.asynccontextmanager
async def _auditor_of(
    data_dir: Path | None, nats_url: str | None, creds: Path | None, tls_ca: Path | None
) -> AsyncIterator[Any]:
    """The auditor's access: to the network named or running here; with ``data_dir``, to that stopped
    network's store, served for the time of the block (refused while a network runs there)."""
    if data_dir is None:
        yield _access("auditor", nats_url, creds, tls_ca)
        return
    from gpufleet.lifecycle import DataDirInUse, stopped_store
    from gpufleet.network import network_running

    try:
        async with stopped_store(data_dir) as access:
            yield access
    except DataDirInUse as e:
        if not network_running(data_dir):
            raise
        live = _live_replay(data_dir)
        raise DataDirInUse(
            f"data directory {data_dir} is in use by {e.holder} (pid {e.pid}): audit the live network with `{live}`",
            data_dir,
            e.pid,
            e.holder,
        ) from None


def _live_replay(data_dir: Path) -> str:
    """The command that audits the network running from ``data_dir``."""
    import os

    from gpufleet.network import DEFAULT_DATA_DIR

    if os.path.abspath(data_dir) == os.path.abspath(DEFAULT_DATA_DIR):
        return "gpufleet replay --audit"
    return f"GPUFLEET_HOME={data_dir} gpufleet replay --audit"


# ---- backup and restore --------------------------------------------------------------------------


def _admin_target(nats_url: str | None, creds: Path | None, tls_ca: Path | None, data_dir: Path | None) -> Any:
    """The network's admin access; None when no network is named or running here: the command then
    works on the store of the data directory, with a server of its own (see ``gpufleet.backup``)."""
    import os

    from gpufleet.network import DEFAULT_DATA_DIR, network_running

    if nats_url is None and not os.environ.get("GPUFLEET_NATS_URL") and not network_running(data_dir):
        if creds is None:
            return None
        nats_url = "nats://127.0.0.1:4222"
    return _access("admin", nats_url, creds, tls_ca, data_dir or DEFAULT_DATA_DIR)


@app.command()
def backup(
    directory: Annotated[Path, typer.Argument(help="A new (or empty) directory for the backup.")],
    nats_url: NatsOpt = None,
    creds: CredsOpt = None,
    tls_ca: TlsCaOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Back up every stream and bucket (JetStream snapshots) and a checksummed manifest, as the network's admin.

    With no network running here and no --nats, it backs up the stopped network's store in the data directory.
    """
    from gpufleet.backup import backup_command
    from gpufleet.network import DEFAULT_DATA_DIR

    target = _admin_target(nats_url, creds, tls_ca, data_dir)
    _run(backup_command(directory, target, data_dir or DEFAULT_DATA_DIR, console))


@app.command()
def restore(
    directory: Annotated[Path, typer.Argument(help="A directory `gpufleet backup` wrote.")],
    force: Annotated[
        bool, typer.Option(help="Replace streams that already exist (stop the network first; their messages are lost).")
    ] = False,
    accept_restored: Annotated[
        bool,
        typer.Option(
            help="Restore a backup older than what this machine's orchestrator or projector applied, and set "
            "their watermarks aside: the events after the backup are lost for good."
        ),
    ] = False,
    nats_url: NatsOpt = None,
    creds: CredsOpt = None,
    tls_ca: TlsCaOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Restore every stream of a backup (checksums verified first), as the network's admin; then say what to do.

    With no network running here and no --nats, it restores into the data directory's store; then `gpufleet up`.
    """
    from gpufleet.backup import restore_command
    from gpufleet.network import DEFAULT_DATA_DIR

    target = _admin_target(nats_url, creds, tls_ca, data_dir)
    home = data_dir or DEFAULT_DATA_DIR
    _run(restore_command(directory, target, home, console, force=force, accept=accept_restored))


# ---- signed checkpoints and receipts -------------------------------------------------------------


def _trusted_key(given: str | None, data_dir: Path | None = None) -> Any:
    """The notary key to trust: given (text or file), ``$GPUFLEET_NOTARY_KEY``, else this machine's
    network's (``network.json``, or ``notary/notary.vkey`` in its data directory); None if none."""
    import os

    from gpufleet.network import DEFAULT_DATA_DIR
    from gpufleet.notary import read_trusted_key

    given = given or os.environ.get("GPUFLEET_NOTARY_KEY")
    if given:
        return read_trusted_key(given)
    home = data_dir or DEFAULT_DATA_DIR
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((home / "network.json").read_text())
        if info.get("notary_key"):
            return read_trusted_key(str(info["notary_key"]))
    vkey = home / "notary" / "notary.vkey"
    return read_trusted_key(vkey) if vkey.exists() else None


async def _audit_signed_checkpoints(store: Any, notary_key: str | None, data_dir: Path | None = None) -> bool:
    """The audit's signed-checkpoint step (``projections.checkpoints``): False on a finding."""
    from projections.checkpoints import audit_checkpoints

    key = _trusted_key(notary_key, data_dir)
    if key is None:
        console.print("  signed checkpoints not checked: no trusted notary key (give --notary-key)")
        return True
    with console.status("recomputing the Merkle root at every signed checkpoint..."):
        found = await audit_checkpoints(store, key)
    console.print(found.render(), highlight=False, markup=False)
    if not found.ok:
        console.print("FAIL: the log is not the one the notary signed", highlight=False)
    return found.ok


@app.command("dashboard")
def dashboard_cmd(
    nats_url: NatsOpt = None,
    creds: CredsOpt = None,
    tls_ca: TlsCaOpt = None,
    port: Annotated[
        int | None, typer.Option(help="Serve on this port of 127.0.0.1 (default 8222 if free, else any; 0: any).")
    ] = None,
    notary_key: NotaryKeyOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Serve the read-only web dashboard of any network on 127.0.0.1, showing what your identity may see.

    An auditor's credentials show the whole network (the log is followed into a cache in the data
    directory); a submitter's show that submitter's own jobs. Ctrl-C or SIGTERM stops it.
    """
    from gpufleet.dashboard.sources import serve_network
    from gpufleet.network import DEFAULT_DATA_DIR

    def ready(url: str, who: str) -> None:
        console.print(f"dashboard for {who} at {url}  (Ctrl-C to stop)", highlight=False, markup=False, soft_wrap=True)

    async def run() -> None:
        access = _access("auditor", nats_url, creds, tls_ca, data_dir)
        key = _trusted_key(notary_key, data_dir)
        await serve_network(access, port=port, notary_key=key, data_dir=data_dir or DEFAULT_DATA_DIR, ready=ready)

    try:
        _run(run())
    except typer.Exit as e:
        if e.exit_code != 130:
            raise


@app.command()
def checkpoint(
    keep: Annotated[
        Path | None, typer.Option(help="Keep the last verified checkpoint here; a new one must extend it.")
    ] = None,
    notary_key: NotaryKeyOpt = None,
    nats_url: NatsOpt = None,
    creds: CredsOpt = None,
    tls_ca: TlsCaOpt = None,
) -> None:
    """Show the log's latest signed checkpoint, verified with the notary's key (and, with --keep, shown
    to extend the last one seen)."""

    async def run() -> None:
        key = _trusted_key(notary_key)
        if key is None:
            _fail("no trusted notary key: give --notary-key (network.json's notary_key) or $GPUFLEET_NOTARY_KEY")
        client = await _client("auditor", nats_url, creds, tls_ca)
        try:
            client.trust(key, keep)
            before = client.checkpoints.last
            cp = await client.checkpoint()
        finally:
            await client.close()
        console.print(f"log {cp.origin}: {cp.size} events, root {cp.root.hex()}", highlight=False)
        console.print(f"signed by {key.vkey}", highlight=False)
        if before is not None:
            console.print(f"extends the checkpoint kept in {keep} (size {before.size})", highlight=False)

    _run(run())


@app.command()
def receipt(
    job_id: Annotated[str, typer.Argument(help="The job (your job's name, or its full id).")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the receipt (JSON) here.")] = None,
    verify: Annotated[
        Path | None, typer.Option("--verify", help="Verify a receipt file offline instead (no network).")
    ] = None,
    keep: Annotated[Path | None, typer.Option(help="The last verified checkpoint (see `checkpoint`).")] = None,
    notary_key: NotaryKeyOpt = None,
    nats_url: NatsOpt = None,
    creds: CredsOpt = None,
    tls_ca: TlsCaOpt = None,
) -> None:
    """Inclusion proofs of a job's events in the signed log: a receipt that verifies offline."""
    from gpufleet.receipts import Receipt

    key = _trusted_key(notary_key)
    if key is None:
        _fail("no trusted notary key: give --notary-key (network.json's notary_key) or $GPUFLEET_NOTARY_KEY")

    def show(r: Any, events: list[Any]) -> None:
        cp = r.checkpoint.split("\n")
        console.print(f"receipt for {r.job_id}: {len(events)} event(s) in the log of {cp[1]} signed by {cp[0]}")
        for env in events:
            console.print(f"  @{env.sequence} {env.subject} {env.type}", highlight=False, markup=False)

    if verify is not None:
        with _one_line():
            try:
                doc = json.loads(verify.read_text())
            except ValueError as e:
                _fail(f"{verify}: not JSON ({e})")
            r = Receipt.from_json(doc)
            show(r, r.verify(key))
            console.print("verified")
        return

    async def run() -> None:
        client = await _client("submitter", nats_url, creds, tls_ca)
        try:
            client.trust(key, keep)
            r = await client.receipt(job_id)
        finally:
            await client.close()
        show(r, r.verify(key))
        if out is not None:
            out.write_text(json.dumps(r.to_json(), indent=1))
            console.print(f"written to {out}")

    _run(run())


# ---- schemas -------------------------------------------------------------------------------------

schema_app = typer.Typer(help="JSON Schemas and the AsyncAPI document.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")


@schema_app.command("export")
def schema_export(directory: Annotated[Path, typer.Argument(help="Where to write them.")]) -> None:
    """Export the JSON Schema of every event, intake body and workload, and the AsyncAPI document."""
    from events.schema import write_schemas

    written = write_schemas(directory)
    console.print(f"{len(written)} files written under {directory}")


# ---- providers and the orchestrator --------------------------------------------------------------

provider_app = typer.Typer(help="Run a provider.", no_args_is_help=True)
app.add_typer(provider_app, name="provider")


@provider_app.command("run")
def provider_run(
    nats_url: NatsOpt = None,
    creds: CredsOpt = None,
    tls_ca: TlsCaOpt = None,
    name: Annotated[str, typer.Option(help="A name people will recognise.")] = "",
    backend: Annotated[str, typer.Option(help="auto (CuPy if a GPU is seen), cuda, or cpu.")] = "auto",
    slots: Annotated[int | None, typer.Option(help="Worker processes (default: one per GPU).")] = None,
    price_micros: Annotated[
        int, typer.Option(min=0, max=MAX_PRICE_MICROS, help="Price, micro-credits per GPU-second.")
    ] = 0,
    memory_limit_mb: Annotated[int | None, typer.Option(help="Per-task GPU memory cap.")] = None,
    accept_code: Annotated[str, typer.Option(help=ACCEPT_CODE_HELP)] = "none",
    unsafe_trusted_code: Annotated[
        bool,
        typer.Option(help="Without bubblewrap, run accepted code anyway, unsandboxed: only code you trust as yours."),
    ] = False,
    code_memory_mb: Annotated[
        int, typer.Option(min=64, max=1 << 24, help="A submitted function's host-memory cap, MiB.")
    ] = 4096,
    metrics: MetricsOpt = None,
) -> None:
    """Join this machine's GPU (or CPU) to a network: detect, calibrate, register, take work.

    The provider's id is the name in its credentials (`gpufleet creds issue provider NAME` on the
    network's machine). Ctrl-C or SIGTERM drains: running work finishes, nothing new is taken, then
    the provider leaves; a second one stops at once (its running tasks are then reassigned).
    """
    from gpu_runtime.packages import AcceptCodeError, parse_accept_code
    from gpu_runtime.service import ProviderRuntime, RuntimeConfig
    from gpufleet.lifecycle import graceful_shutdown
    from gpufleet.network import DEFAULT_DATA_DIR

    listen = _metrics_listen(metrics)
    try:
        code_from = parse_accept_code(accept_code)
    except AcceptCodeError as e:
        _fail(str(e))

    async def run() -> None:
        access = _access("provider", nats_url, creds, tls_ca)
        if access.creds is None:
            from events.store.connection import NO_CREDENTIALS

            _fail(f"a provider needs credentials: {NO_CREDENTIALS}")
        runtime = ProviderRuntime(
            RuntimeConfig(
                nats_url=access.url,
                creds=access.creds,
                tls_ca=access.tls_ca,
                name=name,
                backend=backend,  # type: ignore[arg-type]
                slots=slots,
                price_micros=price_micros,
                memory_limit_mb=memory_limit_mb,
                accept_code=code_from,
                unsafe_trusted_code=unsafe_trusted_code,
                code_memory_mb=code_memory_mb,
                # This machine's own network data (operator keys, credentials), should it run one.
                private_paths=(DEFAULT_DATA_DIR,),
            )
        )
        draining: list[asyncio.Task[None]] = []

        def at_once(_: str) -> None:
            for task in draining:
                task.cancel()

        # SIGTERM or Ctrl-C: drain, then leave; the worker processes go with the runtime (and die
        # with this process, should it be killed).
        async with graceful_shutdown(on_repeat=at_once) as shutdown:
            with console.status("detecting and calibrating the device..."):
                await runtime.start()
            served = None
            try:
                served = await _serve_metrics(listen, providers=(runtime,))
                caps = runtime.capabilities
                assert caps is not None
                console.print(
                    f"provider {runtime.provider_id}: {caps.backend} {caps.gpu_model}, {caps.slots} slot(s), "
                    f"registered on {runtime.config.nats_url}",
                    highlight=False,
                )
                if await shutdown.until(runtime.serve()):
                    console.print("draining: finishing running work (again to stop at once)...")
                    draining.append(asyncio.ensure_future(runtime.drain("stopped by its operator")))
                    with contextlib.suppress(asyncio.CancelledError):
                        await draining[0]
            finally:
                await runtime.close()  # at once, if the drain was cut short; else nothing left to do
                if served is not None:
                    await served.close()

    _run(run())


@provider_app.command("simulate")
def provider_simulate(
    nats_url: NatsOpt = None,
    data_dir: DataDirOpt = None,
    tls_ca: TlsCaOpt = None,
    count: Annotated[int, typer.Option(help="How many simulated providers.")] = 4,
    slots: Annotated[int, typer.Option(help="Slots per provider.")] = 4,
    prefix: Annotated[str, typer.Option(help="Provider ids are <prefix><n>.")] = "sim",
    price: Annotated[int, typer.Option(min=0, max=MAX_PRICE_MICROS, help="Price, micro-credits per GPU-second.")] = 100,
) -> None:
    """Simulated providers (noop and sleep only) that speak the real protocol: for tests and benchmarks.

    Run it on the network's machine: each simulated provider gets credentials of its own from it.
    """
    from events.store.connection import Access
    from gpufleet.auth import Authority
    from gpufleet.network import DEFAULT_DATA_DIR
    from gpufleet.sim import SimulatedProvider

    async def run() -> None:
        home = data_dir or DEFAULT_DATA_DIR
        base = _access("provider", nats_url, None, tls_ca, home)
        authority = Authority.open(home / "auth", create=False)
        fleet = []
        for i in range(count):
            creds = authority.own_creds("provider", f"{prefix}{i}")
            sim = await SimulatedProvider.connect(Access(base.url, creds, base.tls_ca), slots=slots, price_micros=price)
            fleet.append(await sim.start())
        console.print(f"{count} simulated providers with {slots} slots each on {base.url}", highlight=False)
        try:
            await asyncio.Event().wait()
        finally:
            for p in fleet:
                await p.kill()

    _run(run())


orchestrator_app = typer.Typer(help="Run the orchestrator.", no_args_is_help=True)
app.add_typer(orchestrator_app, name="orchestrator")


@orchestrator_app.command("run")
def orchestrator_run(
    nats_url: NatsOpt = None,
    creds: CredsOpt = None,
    tls_ca: TlsCaOpt = None,
    heartbeat_timeout: Annotated[
        float, typer.Option(help="Seconds without a heartbeat before a provider is lost.")
    ] = 6.0,
    lease_start_timeout: Annotated[
        # (min: actors.core.MIN_LEASE_START_S, the least the provenance audit accepts)
        float, typer.Option(min=1.0, help="Seconds for a provider to start a leased task (at least 1).")
    ] = 30.0,
    lease_grace: Annotated[float, typer.Option(help="Seconds a started lease outlives the task timeout.")] = 30.0,
    data_dir: DataDirOpt = None,
    metrics: MetricsOpt = None,
    quota: QuotaOpt = None,
    quotas: QuotasFileOpt = None,
    task_window: TaskWindowOpt = 1_000,
) -> None:
    """Run an orchestrator (and an event feed) against NATS until interrupted (Ctrl-C stops it cleanly).

    It keeps its watermark (the last event it applied) in the data directory, and refuses to start on a
    log that has lost or changed that event."""
    from actors.orchestrator import Orchestrator, OrchestratorConfig
    from events.store import JetStreamEventStore
    from gpufleet.network import DEFAULT_DATA_DIR
    from projections.feed import EventFeed

    config = OrchestratorConfig(
        heartbeat_timeout_s=heartbeat_timeout,
        lease_start_timeout_s=lease_start_timeout,
        lease_grace_s=lease_grace,
        state_dir=data_dir or DEFAULT_DATA_DIR,
        quotas=_quotas(quota, quotas),
        task_window=task_window,
    )
    listen = _metrics_listen(metrics)

    async def run() -> None:
        from gpufleet.lifecycle import graceful_shutdown

        access = _access("orchestrator", nats_url, creds, tls_ca)
        # SIGTERM or Ctrl-C: stop taking intake, then close the feed and the orchestrator in order.
        async with graceful_shutdown() as shutdown:
            orch = await Orchestrator.connect(access, config=config)
            served = None
            try:
                served = await _serve_metrics(listen, orchestrator=orch)
                store = await JetStreamEventStore.connect(access, name="gpufleet-feed")
                feed = EventFeed(store)
                try:
                    await feed.start()
                    console.print(
                        f"orchestrator running on {access.url} (log position {orch.world.position})", highlight=False
                    )
                    # Until a signal, or until it halts on its own (a lost log): one line, non-zero.
                    await shutdown.until(orch.wait())
                finally:
                    await feed.stop()
                    await store.close()
            finally:
                if served is not None:
                    await served.close()
                await orch.close()
        console.print("orchestrator stopped", highlight=False)

    try:
        _run(run())
    except typer.Exit as e:
        if e.exit_code != 130:
            raise


# ---- credentials ---------------------------------------------------------------------------------

creds_app = typer.Typer(
    help="Credentials: issue, revoke and list the identities of the network this machine runs.",
    no_args_is_help=True,
)
app.add_typer(creds_app, name="creds")

RoleArg = Annotated[str, typer.Argument(help="submitter, provider, auditor, admin or orchestrator.")]
NameArg = Annotated[str, typer.Argument(help="Its name: the submitter's name or the provider's id (one token).")]


def _authority(data_dir: Path | None) -> Any:
    from gpufleet.auth import Authority
    from gpufleet.network import DEFAULT_DATA_DIR

    return Authority.open((data_dir or DEFAULT_DATA_DIR) / "auth", create=False)


@creds_app.command("issue")
def creds_issue(
    role: RoleArg,
    name: NameArg,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the .creds file here (0600).")] = None,
    bearer: Annotated[
        bool, typer.Option(help="A JWT that authenticates alone (for clients that cannot sign, such as bash).")
    ] = False,
    rotate: Annotated[bool, typer.Option(help="Revoke this identity's earlier credentials.")] = False,
    expires_days: Annotated[
        float | None, typer.Option(help="Valid for this many days (default: until revoked).")
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Issue credentials for ROLE NAME as a standard NATS .creds file (stdout, or --out)."""
    import os

    with _one_line():
        authority = _authority(data_dir)
        expires = expires_days * 86400 if expires_days else None
        text = authority.issue(role, name, bearer=bearer, rotate=rotate, expires_s=expires)
    if rotate:
        _push_if_running(authority, data_dir)
    if out is None:
        sys.stdout.write(text)
        return
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(out, 0o600)
    Console(stderr=True).print(f"{role} {name}: credentials written to {out} (keep them secret)", highlight=False)


def _push_if_running(authority: Any, data_dir: Path | None) -> bool:
    """Push the accounts to the local network if it runs: a revocation then takes effect at once."""
    from gpufleet.auth import push_accounts
    from gpufleet.network import DEFAULT_DATA_DIR, _alive, _read_info, _tls_kw

    info = _read_info(data_dir or DEFAULT_DATA_DIR)
    if not info or not _alive(int(info.get("pid", 0))):
        return False
    ca = Path(info["tls_ca"]) if info.get("tls_ca") else None
    _run(push_accounts(str(info["url"]), authority, **_tls_kw(ca, str(info["url"]))))
    return True


@creds_app.command("revoke")
def creds_revoke(role: RoleArg, name: NameArg, data_dir: DataDirOpt = None) -> None:
    """Revoke every credential of ROLE NAME: the running server disconnects it and refuses it from now on."""
    with _one_line():
        authority = _authority(data_dir)
        revoked = authority.revoke(role, name)
    if not revoked:
        _fail(f"no live credentials for {role} {name}")
    live = _push_if_running(authority, data_dir)
    where = "on the running network now" if live else "from the next `gpufleet up`"
    console.print(f"revoked {len(revoked)} credential(s) of {role} {name}, {where}", highlight=False)


@creds_app.command("list")
def creds_list(data_dir: DataDirOpt = None) -> None:
    """Every credential issued: role, name, public key, when, and whether it is revoked."""
    with _one_line():
        authority = _authority(data_dir)
    t = Table(title="credentials issued")
    for col in ("role", "name", "public key", "issued", "state"):
        t.add_column(col)
    for c in authority.issued():
        issued = datetime.fromtimestamp(c.issued_at, UTC).strftime("%Y-%m-%d %H:%M")
        state = "revoked" if c.revoked_at is not None else "live"
        t.add_row(c.role, c.name, c.public_key[:12] + "...", issued, state)
    console.print(t)


@creds_app.command("server-config")
def creds_server_config(
    resolver_dir: Annotated[Path, typer.Option(help="Where each server keeps the account JWTs.")] = Path("jwt"),
    data_dir: DataDirOpt = None,
) -> None:
    """Print the nats-server configuration that trusts this network's operator (for your own servers)."""
    with _one_line():
        sys.stdout.write(_authority(data_dir).server_config(resolver_dir))


def main() -> None:
    """Console entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
