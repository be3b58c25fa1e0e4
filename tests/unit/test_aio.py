"""Stopping background tasks for sure (``events.aio``): a task that loses a cancellation, as one under
Python 3.11's ``asyncio.wait_for`` can, is cancelled again until it ends."""

from __future__ import annotations

import asyncio
import contextlib

from events.aio import cancel_and_wait


async def swallows_first_cancel() -> None:
    """A loop whose first cancellation is lost (as ``wait_for`` loses one that lands as it completes)."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(30)
    await asyncio.sleep(30)


async def test_a_task_that_lost_its_cancellation_is_cancelled_again_until_it_ends() -> None:
    once = asyncio.create_task(swallows_first_cancel())
    await asyncio.sleep(0)
    once.cancel()
    done, _ = await asyncio.wait([once], timeout=0.3)
    assert not done, "one cancel() stopped it: this test would prove nothing"
    again = asyncio.create_task(swallows_first_cancel())
    await asyncio.sleep(0)
    assert await cancel_and_wait([again, None], every_s=0.05) == set()
    assert again.cancelled()
    assert await cancel_and_wait([once], every_s=0.05) == set()


async def test_it_gives_up_at_its_timeout_and_says_which_tasks_still_run() -> None:
    stop = asyncio.Event()

    async def deaf() -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(30)

    t = asyncio.create_task(deaf())
    await asyncio.sleep(0)
    assert await cancel_and_wait([t], every_s=0.05, timeout_s=0.2) == {t}
    stop.set()
    assert await cancel_and_wait([t], every_s=0.05) == set()


async def test_a_failed_tasks_exception_is_retrieved_not_reported_as_lost() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    t = asyncio.create_task(fails())
    await asyncio.sleep(0)
    assert await cancel_and_wait([t]) == set()
    assert isinstance(t.exception(), RuntimeError)
    assert t._log_traceback is False  # asyncio would warn "never retrieved"
