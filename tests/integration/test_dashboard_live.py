"""Live progress on the dashboard: laid over real read models (a real log prefix folded by a real
Projector into SQLite), shown for the task's current lease only, and never a crash."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from events import MemoryEventStore
from events.live import LiveProgress
from events.subjects import live_subject
from events.task import TaskStarted
from events.types import utc_now
from gpufleet.dashboard import Changes, Source, create_app
from gpufleet.dashboard.data import job_data
from gpufleet.dashboard.live import LiveProgressCache
from gpufleet.dashboard.sources import open_network
from projections import Projector, SqliteStore
from projections.query import ReadModels
from tests.golden.history import read_log
from tests.secure import SecureServer

TASK = "alice.st.0"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TaskStarted]:
    """The golden history up to the first start of ``alice.st.0``: that task is running."""
    log = read_log()
    cut = next(i for i, e in enumerate(log) if isinstance(e.data, TaskStarted) and e.data.task_id == TASK)
    started = log[cut].data
    assert isinstance(started, TaskStarted)
    path = tmp_path_factory.mktemp("dash-live") / "readmodels.sqlite"

    async def build() -> None:
        store = MemoryEventStore()
        for env in log[: cut + 1]:
            await store.append(env.subject, [env], expected=None)
        db = SqliteStore(path)
        await Projector(store, db).catch_up()
        db.close()

    asyncio.run(build())
    return path, started


@pytest.fixture
def page(running: tuple[Path, TaskStarted]) -> Iterator[tuple[LiveProgressCache, Changes, TaskStarted, object]]:
    path, started = running
    models = ReadModels.open(path)
    changes = Changes()
    cache = LiveProgressCache(changes, every_s=0.0)
    app = create_app(Source(models, changes, who="auditor test", live=cache), allowed_hosts=["testserver"])
    yield cache, changes, started, app
    models.close()


def get(app: object, path: str) -> str:
    async def go() -> str:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            r = await http.get(path)
            assert r.status_code == 200, r.text[:300]
            return r.text

    return asyncio.run(go())


def shown(app: object) -> tuple[str, str]:
    """(the job's progress, the task's) as the job's page shows them."""
    html = get(app, "/jobs/alice.st")
    job = re.search(r'id="job-progress" data-progress="([0-9.]+)"', html)
    task = re.search(rf'data-task="{re.escape(TASK)}" data-state="running" data-progress="([0-9.]+)"', html)
    assert job is not None and task is not None, html[:2000]
    return job.group(1), task.group(1)


def say(cache: LiveProgressCache, provider: str, lease_id: str, fraction: float) -> bool:
    subject = live_subject(TASK, provider)
    assert subject is not None
    body = LiveProgress(lease_id=lease_id, fraction=fraction, rate=3.0, unit="steps", at=utc_now())
    return cache.heard(subject, body.model_dump_json().encode())


def test_the_holder_s_live_progress_shows_on_the_job_s_page(
    page: tuple[LiveProgressCache, Changes, TaskStarted, object],
) -> None:
    cache, changes, started, app = page
    before = shown(app)
    assert before == ("0.000", "0.000")
    version = changes.version
    assert say(cache, started.provider_id, started.lease_id, 0.625)
    assert changes.version > version  # the open pages are woken
    job, task = shown(app)
    assert task == "0.625" and float(job) > 0.0
    assert "3 steps/s" in get(app, "/jobs/alice.st")
    # The jobs page shows it too.
    assert 'data-progress="0.625"' in get(app, "/")


def test_forged_stale_oversized_or_malformed_live_progress_changes_nothing(
    page: tuple[LiveProgressCache, Changes, TaskStarted, object],
) -> None:
    cache, _, started, app = page
    before = shown(app)
    assert say(cache, "mallory", started.lease_id, 0.9)  # another provider, the real lease
    assert shown(app) == before
    assert say(cache, started.provider_id, "l-an-old-lease", 0.9)  # the holder, a stale lease
    assert shown(app) == before
    subject = str(live_subject(TASK, started.provider_id))
    for junk in (b"{" + b" " * 2048 + b"}", b"not json", b"[]", b'{"lease_id": 5}', b"\xff"):
        assert not cache.heard(subject, junk)
    assert not cache.heard("gf.live.alice.st", b"{}")
    assert shown(app) == before


def test_the_cache_is_bounded() -> None:
    cache = LiveProgressCache(Changes(), limit=3, every_s=0.0)
    for i in range(10):
        subject = live_subject(f"alice.j.{i}", "p1")
        assert subject is not None
        data = LiveProgress(lease_id="l1", fraction=0.5, at=utc_now()).model_dump_json().encode()
        assert cache.heard(subject, data)
    assert list(cache.latest) == ["alice.j.7", "alice.j.8", "alice.j.9"]


async def test_an_auditor_s_dashboard_hears_live_progress_on_the_real_server(
    own_nats_server: SecureServer, tmp_path: Path
) -> None:
    running, source = await open_network(own_nats_server.access("auditor", "dash"), port=0, data_dir=tmp_path)
    try:
        assert source.live is not None
        async with own_nats_server.connection("provider", "p1") as p1:
            body = LiveProgress(lease_id="l1", fraction=0.25, at=utc_now()).model_dump_json().encode()
            await p1.publish(str(live_subject(TASK, "p1")), body)
            await p1.flush()
            for _ in range(100):
                if TASK in source.live.latest:
                    break
                await asyncio.sleep(0.02)
        assert source.live.latest[TASK][0].provider_id == "p1"
    finally:
        await running.stop()


def test_a_running_task_s_eta_is_said_again_from_its_live_progress(running: tuple[Path, TaskStarted]) -> None:
    path, started = running
    models = ReadModels.open(path)
    try:
        cache = LiveProgressCache(Changes(), every_s=0.0)
        assert say(cache, started.provider_id, started.lease_id, 0.5)
        t0 = started.at.timestamp()
        update, _ = cache.latest[TASK]
        cache.latest[TASK] = (update, t0 + 10.0)  # heard 10 s into the run: half done
        data = job_data(models.db, "alice.st", t0 + 12.0)
        assert data is not None
        (before,) = [t for t in data.tasks if t.task.task_id == TASK]
        (after,) = [t for t in cache.job(data, t0 + 12.0).tasks if t.task.task_id == TASK]
        assert after.eta_row is not None and before.eta_row is not None
        # The view's rule: 10 s for the first half leaves 10 s, as of when it was heard; 8 s from now.
        assert after.eta_row.remaining_s == pytest.approx(10.0)
        assert after.eta.startswith("8.0 s") and after.eta != before.eta
        assert (after.task.progress, before.task.progress) == (0.5, 0.0)
    finally:
        models.close()
