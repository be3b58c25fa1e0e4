"""Result verification, pure: how results compare, the task decider under replicate and spot, trust,
the job's metering of valid results only, the reactions that pay them, and the scheduler's exclusion.

The last test measures what a spot check catches: a provider that cheats on a fraction of its tasks
runs through the real task decider (decide and evolve) against honest checkers, and the share of its
wrong results caught is compared with the policy's prediction, computed independently of the decider
from :func:`events.verification.spot_probability` alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

import hypothesis
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from pydantic import ValidationError

from actors.ids import derive_id
from actors.job import CompleteJob, DecideJob, MeterUsage, SettleJob, Share, job_decider
from actors.reactions import Intent, plan_task, react, reconcile
from actors.scheduler import PendingTask, Scheduler
from actors.task import (
    CancelTask,
    LeaseTask,
    ReportCompleted,
    ReportProgress,
    TaskCommand,
    TaskState,
    task_decider,
)
from actors.world import Change, World
from events import new_envelope
from events.job import (
    CountSplit,
    JobAccepted,
    JobCompleted,
    JobRejected,
    JobSpec,
    JobSubmitted,
    ProviderCredited,
    SubmitterCharged,
    UsageMetered,
)
from events.metering import metered_amount
from events.reputation import Record
from events.task import (
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskLeased,
    TaskResultJudged,
    TaskResultRejected,
    TaskResultReturned,
)
from events.types import Capabilities, Estimate, EventModel, JsonValue, ObjectRef, Resources, ResultRef
from events.verification import (
    MAX_REPLICAS,
    SPOT_FLOOR,
    TRUSTED_AFTER,
    Compare,
    SpotDraw,
    Tolerance,
    VerifyPolicy,
    agree,
    inline_sha256,
    spot_probability,
)
from tests.factories import at
from tests.unit.decider_spec import given

T = task_decider
J = job_decider
JOB = "alice.j1"
TASK = f"{JOB}.0"
REPLICATE = VerifyPolicy(mode="replicate", replicas=2, quorum=2, max_replicas=4)
Verdict = Literal["valid", "invalid", "inconclusive"]


def ref(value: JsonValue) -> ResultRef:
    """An inline result whose digest is its canonical JSON's (as a provider must report it)."""
    return ResultRef(sha256=inline_sha256(value), size=len(json.dumps(value)), inline=value)


def stored(tag: str) -> ResultRef:
    """A result stored as an object (outside the network's own objects stream), named by ``tag``."""
    sha = hashlib.sha256(tag.encode()).hexdigest()
    return ResultRef(sha256=sha, size=100, object=ObjectRef(bucket="results", name=f"r-{tag}", sha256=sha, size=100))


GOOD = ref({"hits": 3141, "samples": 4000})
BAD = ref({"hits": 3000, "samples": 4000})
WORSE = ref({"hits": 2000, "samples": 4000})


def created(workload: str = "montecarlo", verify: VerifyPolicy | None = REPLICATE, task_id: str = TASK) -> TaskCreated:
    return TaskCreated(
        at=at(0),
        task_id=task_id,
        job_id=task_id.rsplit(".", 1)[0],
        index=0,
        submitter="alice",
        workload=workload,
        params={},
        resources=Resources(),
        estimate=Estimate(),
        timeout_s=600.0,
        verify=verify,
    )


def leased(lease: str, provider: str, t: float, attempt: int, price: int = 100, task_id: str = TASK) -> TaskLeased:
    return TaskLeased(
        at=at(t),
        task_id=task_id,
        lease_id=lease,
        provider_id=provider,
        attempt=attempt,
        expires_at=at(t + 30),
        price_micros=price,
    )


def report(
    lease: str,
    provider: str,
    t: float,
    result: ResultRef = GOOD,
    *,
    gpu_ms: int = 1000,
    draw: float = 0.0,
    trust: int = 0,
    loaded: dict[str, JsonValue] | None = None,
) -> ReportCompleted:
    return ReportCompleted(
        command_id=f"rc-{lease}-{t}",
        at=at(t),
        lease_id=lease,
        provider_id=provider,
        result=result,
        gpu_ms=gpu_ms,
        draw=draw,
        trust=trust,
        loaded=loaded or {},
    )


def returned(
    lease: str,
    provider: str,
    t: float,
    replica: int,
    result: ResultRef = GOOD,
    agrees_with: tuple[str, ...] = (),
    *,
    price: int = 100,
    replicas: int = 2,
    quorum: int = 2,
    spot: SpotDraw | None = None,
) -> TaskResultReturned:
    return TaskResultReturned(
        at=at(t),
        task_id=TASK,
        lease_id=lease,
        provider_id=provider,
        result=result,
        gpu_ms=1000,
        price_micros=price,
        replica=replica,
        agrees_with=list(agrees_with),
        replicas=replicas,
        quorum=quorum,
        spot=spot,
    )


def judged(
    lease: str, provider: str, t: float, verdict: Verdict, canonical: str | None, reason: str = ""
) -> TaskResultJudged:
    return TaskResultJudged(
        at=at(t),
        task_id=TASK,
        lease_id=lease,
        provider_id=provider,
        verdict=verdict,
        canonical=canonical,
        gpu_ms=1000,
        reason=reason,
    )


@dataclass
class Run:
    """One task driven through the real decider, command by command (state folded as it goes)."""

    events: list[EventModel]
    state: TaskState = field(init=False)

    def __post_init__(self) -> None:
        self.state = T.fold(self.events)

    def do(self, cmd: TaskCommand) -> list[EventModel]:
        out = T.decide(cmd, self.state)
        self.events += out
        self.state = T.fold(out, self.state)
        return out

    def lease(self, lease: str, provider: str, t: float, price: int = 100) -> None:
        cmd = LeaseTask(
            command_id=f"l-{lease}",
            at=at(t),
            lease_id=lease,
            provider_id=provider,
            expires_at=at(t + 30),
            price_micros=price,
        )
        (e,) = self.do(cmd)
        assert isinstance(e, TaskLeased)


def names(events: list[EventModel]) -> list[str]:
    return [type(e).__name__ for e in events]


# ---- agree(): exact ----------------------------------------------------------------------------------


def test_exact_agrees_bit_for_bit_and_one_number_however_it_is_spelled() -> None:
    assert agree({"hits": 3141, "n": [1, 2, 3]}, {"n": [1, 2, 3], "hits": 3141}, "exact")
    assert not agree({"hits": 3141}, {"hits": 3142}, "exact")
    # 1 and 1.0 are one number: a runtime in another language may write integers as floats, and an
    # honest result must not be outvoted for its spelling
    assert agree(1, 1.0, "exact")
    assert agree({"hits": 1}, {"hits": 1.0}, "exact")
    assert not agree({"pi": 3.141592653589793}, {"pi": 3.1415926535897936}, "exact")
    # bools are not numbers: True is not 1
    assert not agree(True, 1, "exact")
    assert not agree(True, 1, "tolerance")
    # integers beyond a float's precision still compare exactly
    assert not agree(2**60, 2**60 + 1, "exact")
    assert agree(2**60, 2**60, "exact")
    # within tolerance 1 and 1.0 are the same number
    assert agree(1, 1.0, "tolerance")
    assert agree(None, None, "exact") and agree("x", "x", "exact") and not agree("x", "y", "exact")


def test_exact_ignores_nothing_but_the_listed_bookkeeping() -> None:
    a = {"hits": 5, "meta": {"steps_run": 10}}
    b = {"hits": 5, "meta": {"steps_run": 12}}
    assert not agree(a, b, "exact")
    assert agree(a, b, "exact", ignore=frozenset({"steps_run"}))


# ---- agree(): tolerance ------------------------------------------------------------------------------


def test_tolerance_edges_are_inclusive_for_rtol_and_atol() -> None:
    # |a - b| <= atol + rtol * max(|a|, |b|), with values exactly representable in binary
    rel = Tolerance(rtol=0.5, atol=0.0)
    assert agree(1.0, 2.0, "tolerance", rel)  # 1 <= 0.5 * 2
    assert not agree(1.0, 2.0000001, "tolerance", rel)
    assert agree(-1.0, -2.0, "tolerance", rel)
    assert not agree(1.0, -1.0, "tolerance", rel)  # 2 > 0.5 * 1
    absolute = Tolerance(rtol=0.0, atol=0.25)
    assert agree(1.0, 1.25, "tolerance", absolute)
    assert not agree(1.0, 1.2500001, "tolerance", absolute)
    assert agree(0.0, -0.25, "tolerance", absolute)
    zero = Tolerance(rtol=0.0, atol=0.0)
    assert agree(0.1, 0.1, "tolerance", zero) and not agree(0.1, 0.1 + 1e-17 + 1e-16, "tolerance", zero)
    # the default tolerance: rtol 1e-4, atol 1e-6
    assert agree(1000.0, 1000.09, "tolerance") and not agree(1000.0, 1000.2, "tolerance")
    assert agree(0.0, 1e-6, "tolerance") and not agree(0.0, 2e-6, "tolerance")


def test_tolerance_compares_nested_objects_and_lists_element_by_element() -> None:
    tol = Tolerance(rtol=1e-3, atol=0.0)
    a: JsonValue = {"sum": 1.0, "rows": [[1.0, 2.0], [3.0, {"x": 4.0, "label": "ok"}]]}
    b: JsonValue = {"sum": 1.0005, "rows": [[1.0, 2.001], [3.0, {"x": 4.003, "label": "ok"}]]}
    assert agree(a, b, "tolerance", tol)
    c: JsonValue = {"sum": 1.0005, "rows": [[1.0, 2.001], [3.0, {"x": 4.1, "label": "ok"}]]}
    assert not agree(a, c, "tolerance", tol)  # one deep leaf out of tolerance
    d: JsonValue = {"sum": 1.0, "rows": [[1.0, 2.0], [3.0, {"x": 4.0, "label": "no"}]]}
    assert not agree(a, d, "tolerance", tol)  # non-numeric leaves are equal or not


def test_different_keys_or_lengths_or_shapes_disagree() -> None:
    assert not agree({"a": 1.0}, {"a": 1.0, "b": 2.0}, "tolerance")
    assert not agree({"a": 1.0}, {"b": 1.0}, "tolerance")
    assert not agree([1.0, 2.0], [1.0, 2.0, 3.0], "tolerance")
    assert not agree([1.0], {"0": 1.0}, "tolerance")
    assert not agree([1.0], 1.0, "tolerance")
    assert not agree(None, 0.0, "tolerance")
    assert not agree("1.0", 1.0, "tolerance")


def test_ignored_keys_are_ignored_at_any_depth_and_even_when_only_one_side_has_them() -> None:
    ignore = frozenset({"resumed_from_step", "steps_run"})
    a = {"grid": {"mean": 0.5, "steps_run": 200}, "resumed_from_step": 150}
    b = {"grid": {"mean": 0.5, "steps_run": 50}}
    assert agree(a, b, "tolerance", ignore=ignore)
    assert not agree(a, b, "tolerance")
    deep = {"l": [{"m": {"steps_run": 1, "v": 1.0}}]}
    deeper = {"l": [{"m": {"steps_run": 9, "v": 1.0}}]}
    assert agree(deep, deeper, "tolerance", ignore=ignore)
    # an ignored key never hides a real difference next to it
    assert not agree(deep, {"l": [{"m": {"steps_run": 9, "v": 2.0}}]}, "tolerance", ignore=ignore)


def test_none_never_agrees_even_with_itself() -> None:
    for value in (None, 1, 1.0, "x", {"a": 1}, [1]):
        assert not agree(value, value, "none")


def test_non_finite_values_agree_only_with_the_same_non_finite_value() -> None:
    inf = float("inf")
    nan = float("nan")
    assert agree(inf, inf, "tolerance") and agree(-inf, -inf, "tolerance")
    assert not agree(inf, -inf, "tolerance")
    assert not agree(inf, 1e308, "tolerance")
    assert not agree(nan, nan, "tolerance")  # NaN equals nothing, itself included
    assert not agree(nan, 1.0, "tolerance")
    # results encode non-finite numbers as strings: compared as strings, never as numbers
    assert agree("NaN", "NaN", "tolerance") and agree("Infinity", "Infinity", "tolerance")
    assert not agree("NaN", "Infinity", "tolerance")
    assert not agree("Infinity", 1e308, "tolerance")
    assert not agree({"v": "NaN"}, {"v": 0.0}, "tolerance", Tolerance(rtol=1.0, atol=1e6))


def test_absurdly_deep_results_do_not_agree() -> None:
    a: Any = 1
    for _ in range(80):
        a = [a]
    assert not agree(a, a, "exact")
    shallow: Any = 1
    for _ in range(60):
        shallow = [shallow]
    assert agree(shallow, shallow, "exact")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from("abcd"), inner, max_size=4),
    max_leaves=16,
)


@settings(max_examples=300, deadline=None)
@hypothesis.given(
    a=json_values, b=json_values, how=st.sampled_from(["exact", "tolerance"]), ignore=st.sets(st.sampled_from("ab"))
)
def test_agreement_is_reflexive_and_symmetric(a: Any, b: Any, how: Compare, ignore: set[str]) -> None:
    keys = frozenset(ignore)
    assert agree(a, a, how, ignore=keys)
    assert agree(a, b, how, ignore=keys) == agree(b, a, how, ignore=keys)
    assert not agree(a, b, "none")
    if agree(a, b, "exact", ignore=keys):
        assert agree(a, b, "tolerance", ignore=keys)  # exact agreement is the stricter


def test_a_huge_integer_in_a_result_disagrees_instead_of_crashing_the_decider() -> None:
    # A provider's result may carry any JSON integer (intake and json.loads accept 10**400). Compared
    # under tolerance with a checker's float, float() overflows: the decider raises on the honest
    # checker's report, which is then refused as an internal error, its lease expires (counted
    # against the checker), and the task can never be verified.
    assert not agree(10**400, 1.5, "tolerance")
    run = Run([created("reduction"), leased("L1", "p1", 1, 1)])
    run.do(report("L1", "p1", 3, ref({"sum": 10**400, "n": 16})))
    run.lease("L2", "p2", 4)
    assert names(run.do(report("L2", "p2", 6, ref({"sum": 1.5, "n": 16})))) == ["TaskResultReturned"]


# ---- the policy --------------------------------------------------------------------------------------


def test_a_policy_must_be_coherent() -> None:
    VerifyPolicy(mode="replicate", replicas=3, quorum=3, max_replicas=3)
    VerifyPolicy(mode="none", replicas=1, quorum=1, max_replicas=1)
    with pytest.raises(ValidationError, match="quorum must be at least 2"):
        VerifyPolicy(mode="replicate", replicas=1, quorum=1, max_replicas=1)
    VerifyPolicy(mode="replicate", replicas=MAX_REPLICAS, quorum=MAX_REPLICAS, max_replicas=MAX_REPLICAS)
    with pytest.raises(ValidationError, match="quorum 3 is more than replicas 2"):
        VerifyPolicy(mode="replicate", replicas=2, quorum=3, max_replicas=4)
    with pytest.raises(ValidationError, match="replicas 5 is more than max_replicas 4"):
        VerifyPolicy(mode="replicate", replicas=5, quorum=2, max_replicas=4)
    bad: list[dict[str, Any]] = [
        {"replicas": 0},
        {"quorum": 0},
        {"max_replicas": 0},
        {"max_replicas": MAX_REPLICAS + 1},
        {"replicas": MAX_REPLICAS + 1, "max_replicas": MAX_REPLICAS + 1},
        {"mode": "sometimes"},
        {"tolerance": {"rtol": -0.1}},
        {"tolerance": {"rtol": 1.5}},
        {"tolerance": {"atol": -1.0}},
        {"tolerance": {"atol": 2e6}},
    ]
    for fields in bad:
        with pytest.raises(ValidationError):
            VerifyPolicy.model_validate(fields)


def test_spot_probability_is_one_until_trusted_then_one_over_trust_with_a_floor() -> None:
    assert [spot_probability(n) for n in range(TRUSTED_AFTER)] == [1.0] * TRUSTED_AFTER
    assert spot_probability(TRUSTED_AFTER) == 1.0 / TRUSTED_AFTER
    assert spot_probability(19) == pytest.approx(1 / 19)
    assert spot_probability(20) == SPOT_FLOOR
    assert spot_probability(10_000) == SPOT_FLOOR


# ---- the task decider under replicate ----------------------------------------------------------------


def test_the_first_result_is_held_and_the_task_goes_to_someone_else() -> None:
    history = (created(), leased("L1", "p1", 1, 1))
    state = given(T, *history).when(report("L1", "p1", 3)).then(returned("L1", "p1", 3, 1))
    assert state.status == "queued" and state.lease is None
    assert state.excluded == {"p1"} and state.verifying
    assert state.result is None and state.completed_lease is None


def test_a_second_agreeing_result_settles_it_the_first_is_canonical_and_both_are_valid() -> None:
    history = (created(), leased("L1", "p1", 1, 1), returned("L1", "p1", 3, 1), leased("L2", "p2", 4, 2, price=300))
    second = returned("L2", "p2", 6, 2, agrees_with=("L1",), price=300)
    done = TaskCompleted(
        at=at(6), task_id=TASK, lease_id="L1", provider_id="p1", result=GOOD, gpu_ms=1000, verified_by=2
    )
    state = (
        given(T, *history)
        .when(report("L2", "p2", 6))
        .then(second, judged("L1", "p1", 6, "valid", "L1"), judged("L2", "p2", 6, "valid", "L1"), done)
    )
    assert state.status == "completed" and state.completed_lease == "L1" and state.result == GOOD
    assert [c.verdict for c in state.candidates] == ["valid", "valid"] and not state.verifying


def test_a_disagreeing_second_result_asks_for_a_third_which_decides_who_was_right() -> None:
    run = Run([created(), leased("L1", "p1", 1, 1), returned("L1", "p1", 3, 1)])
    run.lease("L2", "p2", 4)
    assert run.do(report("L2", "p2", 6, BAD)) == [returned("L2", "p2", 6, 2, BAD)]
    assert run.state.status == "queued" and run.state.excluded == {"p1", "p2"}
    run.lease("L3", "p3", 7)
    out = run.do(report("L3", "p3", 9, GOOD))
    assert out[0] == returned("L3", "p3", 9, 3, GOOD, agrees_with=("L1",))
    assert out[1:4] == [
        judged("L1", "p1", 9, "valid", "L1"),
        judged("L2", "p2", 9, "invalid", "L1", "disagrees with the 2 results that agree"),
        judged("L3", "p3", 9, "valid", "L1"),
    ]
    (done,) = out[4:]
    assert isinstance(done, TaskCompleted) and done.lease_id == "L1" and done.verified_by == 2
    final = run.state
    assert done.result == GOOD and final.status == "completed"


def test_a_third_result_that_sides_with_the_second_makes_the_first_invalid() -> None:
    run = Run([created(), leased("L1", "p1", 1, 1), returned("L1", "p1", 3, 1, BAD)])
    run.lease("L2", "p2", 4)
    run.do(report("L2", "p2", 6, GOOD))
    run.lease("L3", "p3", 7)
    out = run.do(report("L3", "p3", 9, GOOD))
    verdicts = {e.lease_id: (e.verdict, e.canonical) for e in out if isinstance(e, TaskResultJudged)}
    assert verdicts == {"L1": ("invalid", "L2"), "L2": ("valid", "L2"), "L3": ("valid", "L2")}
    done = out[-1]
    assert isinstance(done, TaskCompleted) and done.lease_id == "L2" and done.provider_id == "p2"


def test_no_quorum_by_max_replicas_fails_the_task_as_unverifiable_and_judges_all_inconclusive() -> None:
    run = Run([created(verify=VerifyPolicy(mode="replicate", replicas=2, quorum=2, max_replicas=3))])
    results = [GOOD, BAD, WORSE]
    for i, r in enumerate(results, start=1):
        run.lease(f"L{i}", f"p{i}", 10 * i)
        out = run.do(report(f"L{i}", f"p{i}", 10 * i + 2, r))
        if i < len(results):
            assert names(out) == ["TaskResultReturned"]
    assert names(out) == [
        "TaskResultReturned",
        "TaskResultJudged",
        "TaskResultJudged",
        "TaskResultJudged",
        "TaskFailed",
    ]
    judgements = [e for e in out if isinstance(e, TaskResultJudged)]
    assert [(j.lease_id, j.verdict, j.canonical) for j in judgements] == [
        ("L1", "inconclusive", None),
        ("L2", "inconclusive", None),
        ("L3", "inconclusive", None),
    ]
    failed = out[-1]
    assert isinstance(failed, TaskFailed) and failed.reason == "unverifiable" and failed.terminal
    assert run.state.status == "dead" and not run.state.verifying


def test_results_stored_as_objects_compare_by_their_loaded_content() -> None:
    one, two = stored("one"), stored("two")

    def name(r: ResultRef) -> str:
        assert r.object is not None
        return r.object.name

    history = (created(), leased("L1", "p1", 1, 1), returned("L1", "p1", 3, 1, one), leased("L2", "p2", 4, 2))
    # both contents loaded, equal: they agree although their digests and names differ
    same: dict[str, JsonValue] = {name(one): {"hits": 7}, name(two): {"hits": 7}}
    out = given(T, *history).when(report("L2", "p2", 6, two, loaded=same)).decide()
    assert isinstance(out[0], TaskResultReturned) and out[0].agrees_with == ["L1"]
    assert isinstance(out[-1], TaskCompleted) and out[-1].verified_by == 2 and out[-1].result == one
    # loaded, different
    differ: dict[str, JsonValue] = {name(one): {"hits": 7}, name(two): {"hits": 8}}
    out = given(T, *history).when(report("L2", "p2", 6, two, loaded=differ)).decide()
    assert names(out) == ["TaskResultReturned"] and out[0].agrees_with == []  # type: ignore[attr-defined]
    # the earlier result could not be loaded (missing, too large, unreadable): it agrees with nothing
    half: dict[str, JsonValue] = {name(two): {"hits": 7}}
    out = given(T, *history).when(report("L2", "p2", 6, two, loaded=half)).decide()
    assert names(out) == ["TaskResultReturned"] and out[0].agrees_with == []  # type: ignore[attr-defined]
    # nor does the new one when only the earlier is known
    out = given(T, *history).when(report("L2", "p2", 6, two, loaded={name(one): {"hits": 7}})).decide()
    assert names(out) == ["TaskResultReturned"] and out[0].agrees_with == []  # type: ignore[attr-defined]
    # an object result and an inline result of the same value agree
    inline = ref({"hits": 7})
    out = given(T, *history).when(report("L2", "p2", 6, inline, loaded={name(one): {"hits": 7}})).decide()
    assert isinstance(out[0], TaskResultReturned) and out[0].agrees_with == ["L1"]


def test_a_loaded_object_is_known_by_its_name_not_by_its_digest() -> None:
    # A reference to an object never stored must not read another object with the same digest.
    one = stored("one")
    assert one.object is not None
    twin = ResultRef(sha256=one.sha256, size=one.size, object=one.object.model_copy(update={"name": "elsewhere"}))
    history = (created(), leased("L1", "p1", 1, 1), returned("L1", "p1", 3, 1, one), leased("L2", "p2", 4, 2))
    out = given(T, *history).when(report("L2", "p2", 6, twin, loaded={one.object.name: {"hits": 7}})).decide()
    assert isinstance(out[0], TaskResultReturned) and out[0].agrees_with == []


def test_an_inline_result_whose_digest_is_not_its_own_agrees_with_nothing() -> None:
    history = (created(), leased("L1", "p1", 1, 1), returned("L1", "p1", 3, 1), leased("L2", "p2", 4, 2))
    forged = ResultRef(sha256=BAD.sha256, size=GOOD.size, inline=GOOD.inline)  # GOOD's value, BAD's digest
    out = given(T, *history).when(report("L2", "p2", 6, forged)).decide()
    assert names(out) == ["TaskResultReturned"] and out[0].agrees_with == []  # type: ignore[attr-defined]
    # nor does a later honest result agree with the forged one
    run = Run([*history, *out])
    run.lease("L3", "p3", 7)
    out = run.do(report("L3", "p3", 9, GOOD))
    assert isinstance(out[0], TaskResultReturned) and out[0].agrees_with == ["L1"]
    verdicts = {e.lease_id: e.verdict for e in out if isinstance(e, TaskResultJudged)}
    assert verdicts == {"L1": "valid", "L2": "invalid", "L3": "valid"}


def test_cancelling_a_task_with_results_held_judges_them_inconclusive() -> None:
    history = (created(), leased("L1", "p1", 1, 1), returned("L1", "p1", 3, 1), leased("L2", "p2", 4, 2))
    cmd = CancelTask(command_id="cx", at=at(5), reason="job cancelled")
    state = (
        given(T, *history)
        .when(cmd)
        .then(
            TaskResultJudged(
                at=at(5),
                task_id=TASK,
                lease_id="L1",
                provider_id="p1",
                verdict="inconclusive",
                gpu_ms=1000,
                reason="the task was cancelled: job cancelled",
            ),
            TaskCancelled(at=at(5), task_id=TASK, reason="job cancelled", lease_id="L2", provider_id="p2"),
        )
    )
    assert state.status == "cancelled" and not state.verifying


def test_a_replica_computes_from_scratch_not_from_the_checked_providers_checkpoint() -> None:
    # stencil checkpoints; p1 writes one at step 190 of 200, then returns its result. The checker
    # must not resume from it: a result recomputed from p1's own state cannot check p1's work.
    ckpt = ObjectRef(bucket="GF_OBJECTS", name="provider.p1." + "c" * 64, sha256="c" * 64, size=10)
    run = Run([created("stencil"), leased("L1", "p1", 1, 1)])
    progress = ReportProgress(
        command_id="pr", at=at(2), lease_id="L1", provider_id="p1", fraction=0.95, checkpoint=ckpt, checkpoint_step=190
    )
    run.do(progress)
    run.do(report("L1", "p1", 3, ref({"mean": 0.5})))
    assert run.state.excluded == {"p1"}
    replica = LeaseTask(command_id="l2", at=at(4), lease_id="L2", provider_id="p2", expires_at=at(34))
    (e,) = run.do(replica)
    assert isinstance(e, TaskLeased) and e.resume_from is None and e.resume_step == 0


def test_a_returned_result_sent_again_is_idempotent_and_a_changed_one_is_refused_as_late() -> None:
    history = (created(), leased("L1", "p1", 1, 1), returned("L1", "p1", 3, 1))
    # the same report again (redelivered) changes nothing
    given(T, *history).when(report("L1", "p1", 4)).then()
    # another result on the same, ended, lease is refused: late (its own lease), not forged
    (e,) = given(T, *history).when(report("L1", "p1", 4, BAD)).then_types("TaskResultRejected")
    assert isinstance(e, TaskResultRejected) and e.late and e.report == "completed"
    # also while the next replica holds the lease
    history2 = (*history, leased("L2", "p2", 4, 2))
    given(T, *history2).when(report("L1", "p1", 5)).then()
    (e,) = given(T, *history2).when(report("L1", "p1", 5, BAD)).then_types("TaskResultRejected")
    assert isinstance(e, TaskResultRejected) and e.late
    # and after the task completed: the replica's duplicate is idempotent, a changed result is late
    done = Run(list(history2))
    done.do(report("L2", "p2", 6))
    assert done.state.status == "completed"
    given(T, *done.events).when(report("L2", "p2", 7)).then()
    (e,) = given(T, *done.events).when(report("L2", "p2", 7, BAD)).then_types("TaskResultRejected")
    assert isinstance(e, TaskResultRejected) and e.late
    given(T, *done.events).when(report("L1", "p1", 7)).then()
    # a provider that never held a lease of this task is not late: it is forging
    (e,) = given(T, *history2).when(report("L1", "p9", 5, BAD)).then_types("TaskResultRejected")
    assert isinstance(e, TaskResultRejected) and not e.late


# ---- spot checks -------------------------------------------------------------------------------------

SPOT = VerifyPolicy(mode="spot")


def test_an_untrusted_providers_result_is_always_checked() -> None:
    history = (created(verify=SPOT), leased("L1", "p1", 1, 1))
    draw = math.nextafter(1.0, 0.0)
    expected = returned("L1", "p1", 3, 1, spot=SpotDraw(p=1.0, draw=draw, consecutive_valid=0, checked=True))
    state = given(T, *history).when(report("L1", "p1", 3, draw=draw, trust=0)).then(expected)
    assert state.status == "queued" and state.excluded == {"p1"} and state.spot == expected.spot
    for trust in range(TRUSTED_AFTER):
        (e,) = given(T, *history).when(report("L1", "p1", 3, draw=0.99, trust=trust)).decide()
        assert isinstance(e, TaskResultReturned) and e.spot is not None and e.spot.checked


def test_a_trusted_providers_result_is_checked_only_when_the_draw_says_so() -> None:
    history = (created(verify=SPOT), leased("L1", "p1", 1, 1))
    through = given(T, *history).when(report("L1", "p1", 3, draw=0.5, trust=20))
    through.then(
        TaskCompleted(
            at=at(3),
            task_id=TASK,
            lease_id="L1",
            provider_id="p1",
            result=GOOD,
            gpu_ms=1000,
            spot=SpotDraw(p=SPOT_FLOOR, draw=0.5, consecutive_valid=20, checked=False),
        )
    )
    checked = given(T, *history).when(report("L1", "p1", 3, draw=0.01, trust=20))
    checked.then(returned("L1", "p1", 3, 1, spot=SpotDraw(p=SPOT_FLOOR, draw=0.01, consecutive_valid=20, checked=True)))
    # the boundary: checked when draw < p
    (e,) = given(T, *history).when(report("L1", "p1", 3, draw=SPOT_FLOOR, trust=20)).decide()
    assert isinstance(e, TaskCompleted) and e.spot is not None and not e.spot.checked
    # out-of-range draws are clamped (a NaN checks)
    (e,) = given(T, *history).when(report("L1", "p1", 3, draw=float("nan"), trust=20)).decide()
    assert isinstance(e, TaskResultReturned)
    (e,) = given(T, *history).when(report("L1", "p1", 3, draw=-3.0, trust=20)).decide()
    assert isinstance(e, TaskResultReturned)


def test_a_checked_spot_result_needs_a_second_agreeing_result() -> None:
    spot = SpotDraw(p=1.0, draw=0.0, consecutive_valid=0, checked=True)
    run = Run([created(verify=SPOT), leased("L1", "p1", 1, 1), returned("L1", "p1", 3, 1, spot=spot)])
    run.lease("L2", "p2", 4, price=0)  # the checker may be anyone, free or paid
    out = run.do(report("L2", "p2", 6, draw=0.99, trust=0))
    assert names(out) == ["TaskResultReturned", "TaskResultJudged", "TaskResultJudged", "TaskCompleted"]
    assert isinstance(out[0], TaskResultReturned) and out[0].spot is None and out[0].agrees_with == ["L1"]
    assert isinstance(out[-1], TaskCompleted) and out[-1].verified_by == 2 and out[-1].lease_id == "L1"


def test_auto_checks_paid_work_and_trusts_free_work() -> None:
    auto = VerifyPolicy(mode="auto")
    free = (created(verify=auto), leased("L1", "p1", 1, 1, price=0))
    given(T, *free).when(report("L1", "p1", 3)).then(
        TaskCompleted(at=at(3), task_id=TASK, lease_id="L1", provider_id="p1", result=GOOD, gpu_ms=1000)
    )
    paid = (created(verify=auto), leased("L1", "p1", 1, 1, price=1))
    (e,) = given(T, *paid).when(report("L1", "p1", 3, draw=0.5, trust=0)).then_types("TaskResultReturned")
    assert isinstance(e, TaskResultReturned) and e.spot is not None and e.spot.checked
    (e,) = given(T, *paid).when(report("L1", "p1", 3, draw=0.5, trust=50)).then_types("TaskCompleted")
    assert isinstance(e, TaskCompleted) and e.spot is not None and not e.spot.checked


@pytest.mark.parametrize("workload", ["sleep", "noop"])
@pytest.mark.parametrize("mode", ["replicate", "spot", "auto"])
def test_results_that_cannot_be_compared_are_never_verified(workload: str, mode: str) -> None:
    history = (created(workload, VerifyPolicy(mode=mode)), leased("L1", "p1", 1, 1))
    given(T, *history).when(report("L1", "p1", 3)).then(
        TaskCompleted(at=at(3), task_id=TASK, lease_id="L1", provider_id="p1", result=GOOD, gpu_ms=1000)
    )


def test_a_task_without_a_policy_or_with_mode_none_completes_at_once() -> None:
    for verify in (None, VerifyPolicy(mode="none")):
        history = (created(verify=verify), leased("L1", "p1", 1, 1))
        (e,) = given(T, *history).when(report("L1", "p1", 3)).then_types("TaskCompleted")
        assert isinstance(e, TaskCompleted) and e.verified_by == 0 and e.spot is None


# ---- trust and reputation ----------------------------------------------------------------------------


def test_trust_grows_with_valid_results_and_an_invalid_one_resets_it() -> None:
    rec = Record()
    for n in range(1, 13):
        rec.judged(judged(f"L{n}", "p1", n, "valid", f"L{n}"))
        assert rec.consecutive_valid == n
    assert rec.completed == 12
    rec.judged(judged("Lx", "p1", 20, "inconclusive", None))
    assert rec.consecutive_valid == 12 and rec.invalid == 0 and rec.completed == 12  # costs nothing
    rec.judged(judged("Ly", "p1", 21, "invalid", "Lz"))
    assert rec.consecutive_valid == 0 and rec.invalid == 1 and rec.completed == 12
    rec.judged(judged("Lw", "p1", 22, "valid", "Lw"))
    assert rec.consecutive_valid == 1


def test_an_invalid_result_costs_twice_what_a_fault_costs() -> None:
    base = Record(completed=10)
    fault = Record(completed=10, failed=1)
    invalid = Record(completed=10)
    invalid.judged(judged("L1", "p1", 1, "invalid", "L2"))
    assert invalid.value < fault.value < base.value
    assert invalid.value == Record(completed=10, failed=2).value == pytest.approx(11 / 14)


# ---- the job decider ---------------------------------------------------------------------------------

MC_SPEC = JobSpec(workload="montecarlo", params={"samples": 4096}, split=CountSplit(count=2), submitter="alice")


def job_history(verify: VerifyPolicy | None = REPLICATE) -> tuple[EventModel, ...]:
    return (
        JobSubmitted(at=at(0), job_id=JOB, spec=MC_SPEC),
        JobAccepted(at=at(1), job_id=JOB, task_count=2, predicted_s=1.0, verify=verify),
    )


def usage(task: str, provider: str, gpu_ms: int, price: int, lease: str | None) -> UsageMetered:
    return UsageMetered(
        at=at(5),
        job_id=JOB,
        task_id=task,
        provider_id=provider,
        submitter="alice",
        gpu_ms=gpu_ms,
        price_micros=price,
        amount_micros=metered_amount(gpu_ms, price),
        lease_id=lease,
    )


def test_metering_a_verified_task_meters_each_valid_share_with_its_lease() -> None:
    shares = (Share("L1", "p1", 1000, 100), Share("L3", "p3", 1501, 7))
    cmd = MeterUsage(
        command_id="m", at=at(5), task_id=f"{JOB}.0", provider_id="p1", gpu_ms=1000, price_micros=100, shares=shares
    )
    state = (
        given(J, *job_history())
        .when(cmd)
        .then(usage(f"{JOB}.0", "p1", 1000, 100, "L1"), usage(f"{JOB}.0", "p3", 1501, 7, "L3"))
    )
    assert state.done == {f"{JOB}.0"} and len(state.metered) == 2
    # metered once: the same task again changes nothing
    given(J, *job_history(), *J.decide(cmd, J.fold(job_history()))).when(cmd).then()


def test_a_job_completes_when_every_task_is_metered_however_many_shares_each_had() -> None:
    t0, t1 = f"{JOB}.0", f"{JOB}.1"
    two_shares = (usage(t0, "p1", 1000, 100, "L1"), usage(t0, "p2", 2000, 100, "L2"))
    complete = CompleteJob(command_id="cj", at=at(9))
    # three metering events, but only one of two tasks done: not complete
    given(J, *job_history(), *two_shares).when(complete).then()
    one = usage(t1, "p3", 500, 100, None)
    state = (
        given(J, *job_history(), *two_shares, one)
        .when(complete)
        .then(JobCompleted(at=at(9), job_id=JOB, tasks=2, gpu_ms=3500, cost_micros=350))
    )
    assert state.done == {t0, t1}
    charged = J.decide(SettleJob(command_id="st", at=at(10)), state)
    assert charged == [
        SubmitterCharged(at=at(10), job_id=JOB, submitter="alice", amount_micros=350, gpu_ms=3500),
        ProviderCredited(at=at(10), job_id=JOB, provider_id="p1", amount_micros=100, gpu_ms=1000),
        ProviderCredited(at=at(10), job_id=JOB, provider_id="p2", amount_micros=200, gpu_ms=2000),
        ProviderCredited(at=at(10), job_id=JOB, provider_id="p3", amount_micros=50, gpu_ms=500),
    ]


def test_acceptance_records_the_specs_policy_else_the_networks_default() -> None:
    decide = DecideJob(command_id="dj", at=at(1), default_verify=VerifyPolicy(mode="auto"))
    submitted = JobSubmitted(at=at(0), job_id=JOB, spec=MC_SPEC)
    (e,) = given(J, submitted).when(decide).then_types("JobAccepted")
    assert isinstance(e, JobAccepted) and e.verify == VerifyPolicy(mode="auto")
    own = MC_SPEC.model_copy(update={"verify": REPLICATE})
    (e,) = given(J, JobSubmitted(at=at(0), job_id=JOB, spec=own)).when(decide).then_types("JobAccepted")
    assert isinstance(e, JobAccepted) and e.verify == REPLICATE
    off = MC_SPEC.model_copy(update={"verify": VerifyPolicy(mode="none")})
    (e,) = given(J, JobSubmitted(at=at(0), job_id=JOB, spec=off)).when(decide).then_types("JobAccepted")
    assert isinstance(e, JobAccepted) and e.verify is None
    no_default = DecideJob(command_id="dj", at=at(1))
    (e,) = given(J, submitted).when(no_default).then_types("JobAccepted")
    assert isinstance(e, JobAccepted) and e.verify is None


def test_verification_of_incomparable_work_is_refused_when_asked_and_dropped_by_default() -> None:
    sleep = JobSpec(workload="sleep", params={"seconds": 1.0}, submitter="alice")
    decide = DecideJob(command_id="dj", at=at(1), default_verify=VerifyPolicy(mode="auto"))
    for mode in ("replicate", "spot"):
        asked = sleep.model_copy(update={"verify": VerifyPolicy(mode=mode)})
        (e,) = given(J, JobSubmitted(at=at(0), job_id=JOB, spec=asked)).when(decide).then_types("JobRejected")
        assert isinstance(e, JobRejected) and e.field == "verify.mode"
    (e,) = given(J, JobSubmitted(at=at(0), job_id=JOB, spec=sleep)).when(decide).then_types("JobAccepted")
    assert isinstance(e, JobAccepted) and e.verify is None


# ---- reactions pay the valid results only ------------------------------------------------------------


class Log:
    """A world folded from envelopes, as the orchestrator folds the log."""

    def __init__(self) -> None:
        self.world = World()
        self.n = 0

    def add(self, kind: str, aggregate: str, *events: EventModel) -> list[Change]:
        out = []
        for e in events:
            self.n += 1
            change = self.world.apply(new_envelope(f"{kind}.{aggregate}", e, id=f"ev-{self.n}", source="tests"))
            assert change is not None
            out.append(change)
        return out


def verified_world(results: list[ResultRef], prices: list[int]) -> tuple[Log, list[Change]]:
    """A job of one montecarlo task under replicate, each result returned in turn by p1, p2, ..."""
    log = Log()
    spec = MC_SPEC.model_copy(update={"split": CountSplit(count=1)})
    log.add("job", JOB, JobSubmitted(at=at(0), job_id=JOB, spec=spec))
    log.add("job", JOB, JobAccepted(at=at(1), job_id=JOB, task_count=1, predicted_s=1.0, verify=REPLICATE))
    log.add("task", TASK, plan_task(JOB, spec, 0, at(1), REPLICATE))
    last: list[Change] = []
    for i, (r, price) in enumerate(zip(results, prices, strict=True), start=1):
        state = log.world.tasks[TASK]
        cmd = LeaseTask(
            command_id=f"l{i}",
            at=at(10 * i),
            lease_id=f"L{i}",
            provider_id=f"p{i}",
            expires_at=at(10 * i + 60),
            price_micros=price,
        )
        log.add("task", TASK, *T.decide(cmd, state))
        out = T.decide(report(f"L{i}", f"p{i}", 10 * i + 2 + i, r, gpu_ms=1000 * i), log.world.tasks[TASK])
        last = log.add("task", TASK, *out)
    return log, last


def test_the_reaction_to_a_verified_completion_meters_only_the_valid_results() -> None:
    log, changes = verified_world([GOOD, BAD, GOOD], [100, 200, 300])
    completed = changes[-1]
    assert isinstance(completed.event, TaskCompleted)
    (intent,) = react(completed, log.world)
    expected = MeterUsage(
        command_id=derive_id("mu-", TASK),
        at=at(35),
        task_id=TASK,
        provider_id="p1",
        gpu_ms=1000,
        price_micros=100,
        shares=(Share("L1", "p1", 1000, 100), Share("L3", "p3", 3000, 300)),
    )
    assert intent == Intent("job", JOB, expected, completed.envelope.id, JOB)
    # reconciliation owes the same command (same id: applied once)
    owed = [i for i in reconcile(log.world, at(50)) if isinstance(i.command, MeterUsage)]
    assert [i.command.command_id for i in owed] == [expected.command_id]
    assert owed[0].command.shares == expected.shares
    # through the job decider: p2's invalid result earns nothing, and the books settle what was metered
    metered = log.add("job", JOB, *J.decide(intent.command, log.world.jobs[JOB]))
    assert [(c.event.provider_id, c.event.lease_id) for c in metered] == [("p1", "L1"), ("p3", "L3")]  # type: ignore[attr-defined]
    (complete,) = react(metered[-1], log.world)
    log.add("job", JOB, *J.decide(complete.command, log.world.jobs[JOB]))
    settled = J.decide(SettleJob(command_id="st", at=at(60)), log.world.jobs[JOB])
    credited = {e.provider_id: e.amount_micros for e in settled if isinstance(e, ProviderCredited)}
    assert credited == {"p1": metered_amount(1000, 100), "p3": metered_amount(3000, 300)}
    (charged,) = [e for e in settled if isinstance(e, SubmitterCharged)]
    assert charged.amount_micros == sum(credited.values())


def test_a_task_that_failed_verification_is_never_metered() -> None:
    log = Log()
    spec = MC_SPEC.model_copy(update={"split": CountSplit(count=1)})
    policy = VerifyPolicy(mode="replicate", replicas=2, quorum=2, max_replicas=2)
    log.add("job", JOB, JobSubmitted(at=at(0), job_id=JOB, spec=spec))
    log.add("job", JOB, JobAccepted(at=at(1), job_id=JOB, task_count=1, predicted_s=1.0, verify=policy))
    log.add("task", TASK, plan_task(JOB, spec, 0, at(1), policy))
    last: list[Change] = []
    for i, r in enumerate([GOOD, BAD], start=1):
        log.add("task", TASK, leased(f"L{i}", f"p{i}", 10 * i, i))
        last = log.add("task", TASK, *T.decide(report(f"L{i}", f"p{i}", 10 * i + 2, r), log.world.tasks[TASK]))
    assert isinstance(last[-1].event, TaskFailed) and last[-1].event.reason == "unverifiable"
    intents = [i for c in last for i in react(c, log.world)] + reconcile(log.world, at(50))
    assert not [i for i in intents if isinstance(i.command, MeterUsage)]


# ---- the scheduler never gives a replica to a provider that already returned a result ----------------


def caps(slots: int, price: int, model: str = "m") -> Capabilities:
    return Capabilities(backend="cpu", gpu_model=model, vram_mb=16_000, slots=slots, price_micros=price)


def replica(task_id: str = "alice.j1.0", exclude: frozenset[str] = frozenset({"p1"})) -> PendingTask:
    return PendingTask(task_id, "alice", 5, "montecarlo", Resources(), Estimate(), None, exclude=exclude)


@pytest.mark.parametrize("same_class", [True, False])
def test_a_replica_waits_while_only_excluded_providers_are_free_and_goes_to_the_next_one_freed(
    same_class: bool,
) -> None:
    s = Scheduler()
    # p1 is the better provider: cheaper (different class) or more reputable (same class)
    s.upsert_provider("p1", caps(3, 10 if not same_class else 100, "a"), None, available=True, reputation=1.0)
    s.upsert_provider("p2", caps(1, 100, "a" if same_class else "b"), None, available=True, reputation=0.6)
    s.occupy("p2")  # p2 is busy
    task = replica()
    s.enqueue(task)
    assert s.assign() == []
    assert s.pending() == 1
    # p1 still has free slots, and takes other work: it is the best, and it is free
    other = PendingTask("bob.j2.0", "bob", 5, "montecarlo", Resources(), Estimate())
    s.enqueue(other)
    placed = s.assign()
    assert [(a.task.task_id, a.provider_id) for a in placed] == [("bob.j2.0", "p1")]
    assert s.assign() == [] and s.pending() == 1
    # p2 frees its slot: the replica goes there, not to p1
    s.release("p2")
    (a,) = s.assign()
    assert (a.task.task_id, a.provider_id) == (task.task_id, "p2")
    assert s.pending() == 0


def test_a_replica_goes_to_a_worse_provider_when_the_best_is_excluded() -> None:
    s = Scheduler()
    s.upsert_provider("p1", caps(4, 100), None, available=True, reputation=1.0)
    s.upsert_provider("p2", caps(4, 100), None, available=True, reputation=0.5)
    s.upsert_provider("p3", caps(4, 100, "other"), None, available=True, reputation=0.4)
    plain = PendingTask("bob.j2.0", "bob", 5, "montecarlo", Resources(), Estimate())
    s.enqueue(plain)
    (a,) = s.assign()
    assert a.provider_id == "p1"  # p1 is the best, free
    s.enqueue(replica("alice.j1.0", frozenset({"p1"})))
    s.enqueue(replica("alice.j1.1", frozenset({"p1", "p2"})))
    s.enqueue(replica("alice.j1.2", frozenset({"p1", "p2", "p3"})))
    placed = {a.task.task_id: a.provider_id for a in s.assign()}
    assert placed == {"alice.j1.0": "p2", "alice.j1.1": "p3"}
    assert s.pending() == 1  # the third has nowhere to go and waits
    s.upsert_provider("p4", caps(1, 100, "new"), None, available=True, reputation=0.1)
    placed = {a.task.task_id: a.provider_id for a in s.assign()}
    assert placed == {"alice.j1.2": "p4"}


# ---- the spot check's catch rate, measured through the real decider ---------------------------------

CHEAT_RATE = 0.2
TASKS = 2000
SEED = 20260101


@dataclass
class CatchTally:
    wrong: int = 0
    caught: int = 0
    #: sum over the wrong results of the probability they were checked with (trust at the time)
    expected: float = 0.0
    variance: float = 0.0
    trust: list[int] = field(default_factory=list)


def _simulate_through_the_decider(rng: random.Random, cheat_rate: float, tasks: int) -> CatchTally:
    """One provider, ``cheater``, takes the first lease of every task under ``spot``; honest checkers
    (never the same twice in a task) take the replicas. Its trust is the ``Record`` folded from the
    ``TaskResultJudged`` events, as the orchestrator keeps it. Two draws per task, in this order: does
    it cheat, and the spot-check draw."""
    rec = Record()
    tally = CatchTally()
    for n in range(tasks):
        task_id = f"alice.j{n}.0"
        cheats = rng.random() < cheat_rate
        draw = rng.random()
        trust = rec.consecutive_valid
        state = T.fold([created(verify=SPOT, task_id=task_id), leased("L1", "cheater", 1, 1, task_id=task_id)])
        mine = BAD if cheats else GOOD
        out = T.decide(report("L1", "cheater", 2, mine, draw=draw, trust=trust), state)
        state = T.fold(out, state)
        replica_n = 1
        while state.status != "completed":
            assert state.status == "queued" and "cheater" in state.excluded
            replica_n += 1
            lease = f"L{replica_n}"
            checker = f"honest{replica_n}"
            state = T.fold([leased(lease, checker, 2 * replica_n, replica_n, task_id=task_id)], state)
            more = T.decide(report(lease, checker, 2 * replica_n + 1, GOOD), state)
            out += more
            state = T.fold(more, state)
        mine_judged = [e for e in out if isinstance(e, TaskResultJudged) and e.provider_id == "cheater"]
        for e in mine_judged:
            rec.judged(e)
        (done,) = [e for e in out if isinstance(e, TaskCompleted)]
        if cheats:
            p = spot_probability(trust)
            tally.wrong += 1
            tally.expected += p
            tally.variance += p * (1 - p)
            caught = [e.verdict for e in mine_judged] == ["invalid"]
            tally.caught += caught
            # a wrong result is either caught or reaches the submitter; never both, never neither
            assert caught == (done.result == GOOD)
        else:
            assert done.result == GOOD and [e.verdict for e in mine_judged] in ([], ["valid"])
        tally.trust.append(rec.consecutive_valid)
    return tally


def _simulate_plainly(rng: random.Random, cheat_rate: float, tasks: int) -> tuple[int, int, list[int]]:
    """The same story told from the policy alone: checked when draw < spot_probability(trust); a
    checked cheat resets trust, a checked honest result adds one."""
    trust, wrong, caught, path = 0, 0, 0, []
    for _ in range(tasks):
        cheats = rng.random() < cheat_rate
        checked = rng.random() < spot_probability(trust)
        wrong += cheats
        if checked:
            caught += cheats
            trust = 0 if cheats else trust + 1
        path.append(trust)
    return wrong, caught, path


def _predicted_catch_rate(cheat_rate: float, tasks: int) -> float:
    """The expected share of wrong results caught over ``tasks`` tasks from trust 0: a Markov chain on
    trust (every trust from ``1 / SPOT_FLOOR`` up checks with the same probability, so it is one state).

    A cheat is independent of the trust, so the expected catch rate is the mean over tasks of the
    expected probability of a check at that task."""
    top = math.ceil(1 / SPOT_FLOOR)
    p = [spot_probability(c) for c in range(top + 1)]
    dist = [1.0] + [0.0] * top
    total = 0.0
    for _ in range(tasks):
        total += sum(x * q for x, q in zip(dist, p, strict=True))
        nxt = [0.0] * (top + 1)
        for c, x in enumerate(dist):
            nxt[c] += x * (1 - p[c])
            nxt[min(c + 1, top)] += x * p[c] * (1 - cheat_rate)
            nxt[0] += x * p[c] * cheat_rate
        dist = nxt
    return total / tasks


def test_spot_checks_catch_what_the_policy_predicts() -> None:
    tally = _simulate_through_the_decider(random.Random(SEED), CHEAT_RATE, TASKS)
    # 1. The decider checks exactly when the policy says: the same draws give the same story.
    wrong, caught, path = _simulate_plainly(random.Random(SEED), CHEAT_RATE, TASKS)
    assert (tally.wrong, tally.caught, tally.trust) == (wrong, caught, path)
    assert tally.wrong > 300
    # 2. Given the trust at each wrong result, the caught count is a sum of independent Bernoulli
    #    draws (Poisson-binomial): within 4 standard errors of its mean.
    se = math.sqrt(tally.variance)
    assert abs(tally.caught - tally.expected) <= 4 * se, (tally.caught, tally.expected, se)
    # 3. Against the policy's prediction from trust 0 (no draw used). Trust carries from task to task,
    #    so successive checks are correlated and the catch rate varies ~3.6 times more than a binomial
    #    of the same size would: the spread comes from repeating the plain simulation on fresh seeds
    #    (cheap), and the prediction must also agree with their mean.
    predicted = _predicted_catch_rate(CHEAT_RATE, TASKS)
    rates = []
    for seed in range(200):
        w, c, _ = _simulate_plainly(random.Random(seed), CHEAT_RATE, TASKS)
        rates.append(c / w)
    mean = sum(rates) / len(rates)
    sd = math.sqrt(sum((r - mean) ** 2 for r in rates) / (len(rates) - 1))
    binomial_se = math.sqrt(predicted * (1 - predicted) / (CHEAT_RATE * TASKS))
    assert sd > binomial_se  # the correlation is real: a binomial error bar would be too narrow
    assert abs(mean - predicted) <= 4 * sd / math.sqrt(len(rates)), (mean, predicted)
    measured = tally.caught / tally.wrong
    assert abs(measured - predicted) <= 4 * sd, (measured, predicted, sd)
    # what the policy buys at this cheat rate: well short of all, far from none
    assert 0.3 < predicted < 0.6


def test_an_honest_provider_earns_trust_and_is_checked_less_and_less() -> None:
    tally = _simulate_through_the_decider(random.Random(SEED + 1), 0.0, 300)
    assert tally.wrong == 0
    # trust only grows; every step is +0 (unchecked) or +1 (checked and valid)
    steps = [b - a for a, b in zip([0, *tally.trust], tally.trust, strict=False)]
    assert set(steps) <= {0, 1}
    assert tally.trust[TRUSTED_AFTER - 1] == TRUSTED_AFTER  # every one of its first results is checked
    assert tally.trust[-1] < 300 and tally.trust[-1] > TRUSTED_AFTER


# ---- written against the survivors of the mutation run (bench/out/mutation.md) -----------------------


def test_the_workload_s_comparison_and_the_job_s_tolerance_are_the_ones_used() -> None:
    close_a, close_b = ref({"value": 1.0}), ref({"value": 1.05})
    # reduction compares within the tolerance: 5% apart agrees under rtol 0.1, not under the default.
    loose = VerifyPolicy(mode="replicate", tolerance=Tolerance(rtol=0.1, atol=0.0))
    for policy, agrees in ((loose, True), (REPLICATE, False)):
        run = Run([created("reduction", policy), leased("L1", "p1", 1, 1)])
        run.do(report("L1", "p1", 2, close_a))
        run.lease("L2", "p2", 3)
        out = run.do(report("L2", "p2", 4, close_b))
        assert isinstance(out[0], TaskResultReturned) and out[0].agrees_with == (["L1"] if agrees else [])
    # montecarlo compares exactly: the same 5% apart never agrees, whatever the tolerance.
    run = Run([created("montecarlo", loose), leased("L1", "p1", 1, 1)])
    run.do(report("L1", "p1", 2, close_a))
    run.lease("L2", "p2", 3)
    out = run.do(report("L2", "p2", 4, close_b))
    assert isinstance(out[0], TaskResultReturned) and out[0].agrees_with == []
    # stencil ignores its bookkeeping keys: a resumed run agrees with one that ran from scratch.
    first, resumed = ref({"sum": 2.0, "steps_run": 200}), ref({"sum": 2.0, "steps_run": 40})
    run = Run([created("stencil", REPLICATE), leased("L1", "p1", 1, 1)])
    run.do(report("L1", "p1", 2, first))
    run.lease("L2", "p2", 3)
    assert names(run.do(report("L2", "p2", 4, resumed)))[-1] == "TaskCompleted"


def test_two_results_whose_digests_lie_never_agree_with_each_other() -> None:
    liar_a = ResultRef(sha256="a" * 64, size=4, inline=None)
    liar_b = ResultRef(sha256="b" * 64, size=4, inline=None)
    run = Run([created(), leased("L1", "p1", 1, 1)])
    run.do(report("L1", "p1", 2, liar_a))
    run.lease("L2", "p2", 3)
    out = run.do(report("L2", "p2", 4, liar_b))
    assert names(out) == ["TaskResultReturned"] and out[0].agrees_with == []  # type: ignore[attr-defined]


def test_a_result_agreeing_with_a_valid_one_but_not_the_canonical_one_is_inconclusive() -> None:
    # X ~ A, X ~ B, A ~ D, and nothing else (atol 1): X and A tie on support, X came first and is
    # canonical; A and B are valid; D agrees only with A: inconclusive, neither paid nor blamed.
    policy = VerifyPolicy(mode="replicate", replicas=4, quorum=2, max_replicas=4, tolerance=Tolerance(rtol=0, atol=1))
    run = Run([created("reduction", policy)])
    values = {"LX": 10.0, "LA": 10.9, "LB": 9.5, "LD": 11.8}
    out: list[EventModel] = []
    for i, (lease, v) in enumerate(values.items()):
        run.lease(lease, f"p{i}", 10 * i + 1)
        out = run.do(report(lease, f"p{i}", 10 * i + 2, ref({"value": v})))
    verdicts = {e.lease_id: (e.verdict, e.canonical) for e in out if isinstance(e, TaskResultJudged)}
    assert verdicts == {
        "LX": ("valid", "LX"),
        "LA": ("valid", "LX"),
        "LB": ("valid", "LX"),
        "LD": ("inconclusive", "LX"),
    }
    done = out[-1]
    assert isinstance(done, TaskCompleted) and done.lease_id == "LX" and done.verified_by == 3


def test_the_canonical_completion_carries_the_canonical_result_s_own_time_and_metrics() -> None:
    run = Run([created(), leased("L1", "p1", 1, 1)])
    first = ReportCompleted(
        command_id="c1", at=at(3), lease_id="L1", provider_id="p1", result=GOOD, gpu_ms=1500, metrics={"kernel_s": 1.25}
    )
    run.do(first)
    run.lease("L2", "p2", 4)
    second = ReportCompleted(
        command_id="c2", at=at(9), lease_id="L2", provider_id="p2", result=GOOD, gpu_ms=800, metrics={"kernel_s": 0.5}
    )
    done = run.do(second)[-1]
    assert isinstance(done, TaskCompleted) and done.lease_id == "L1"
    assert (done.gpu_ms, done.metrics) == (1500, {"kernel_s": 1.25})


def test_an_unverifiable_task_says_why() -> None:
    policy = VerifyPolicy(mode="replicate", replicas=2, quorum=2, max_replicas=2)
    run = Run([created(verify=policy), leased("L1", "p1", 1, 1)])
    run.do(report("L1", "p1", 2, GOOD))
    run.lease("L2", "p2", 3)
    failed = run.do(report("L2", "p2", 4, BAD))[-1]
    assert isinstance(failed, TaskFailed) and failed.reason == "unverifiable"
    assert failed.message == "no 2 of 2 results agree"


def test_a_draw_out_of_range_is_clamped_and_a_certain_check_is_made_whatever_the_draw() -> None:
    spot = VerifyPolicy(mode="spot")
    # Trust 0: p = 1, checked even at a draw of 1 (or more).
    for draw in (1.0, 7.5):
        out = given(T, created(verify=spot), leased("L1", "p1", 1, 1)).when(report("L1", "p1", 2, draw=draw)).decide()
        assert isinstance(out[0], TaskResultReturned) and out[0].spot is not None
        assert out[0].spot.checked and out[0].spot.draw == 1.0
    # A trusted provider, a draw above 1: recorded as 1, not checked.
    out = (
        given(T, created(verify=spot), leased("L1", "p1", 1, 1))
        .when(report("L1", "p1", 2, draw=3.0, trust=40))
        .decide()
    )
    assert isinstance(out[0], TaskCompleted) and out[0].spot is not None
    assert (out[0].spot.draw, out[0].spot.checked, out[0].spot.p) == (1.0, False, SPOT_FLOOR)
    # A negative or non-finite draw checks (0).
    for draw in (-1.0, math.nan):
        out = (
            given(T, created(verify=spot), leased("L1", "p1", 1, 1))
            .when(report("L1", "p1", 2, draw=draw, trust=40))
            .decide()
        )
        assert isinstance(out[0], TaskResultReturned) and out[0].spot is not None and out[0].spot.draw == 0.0


def test_a_task_holding_results_waits_for_a_replica_at_most_its_policy_s_wait() -> None:
    from actors.task import ExpireVerification

    policy = VerifyPolicy(mode="replicate", wait_s=60.0)
    run = Run([created(verify=policy), leased("L1", "p1", 1, 1)])
    run.do(report("L1", "p1", 2, GOOD))
    assert run.state.status == "queued" and run.state.waiting_since == at(2)
    assert T.decide(ExpireVerification(command_id="x", at=at(61.9)), run.state) == []
    out = T.decide(ExpireVerification(command_id="x", at=at(62)), run.state)
    assert names(out) == ["TaskResultJudged", "TaskFailed"]
    assert isinstance(out[0], TaskResultJudged) and out[0].verdict == "inconclusive" and out[0].lease_id == "L1"
    assert isinstance(out[1], TaskFailed) and out[1].reason == "unverifiable" and out[1].terminal
    assert out[1].message == "no other provider took a replica within 60 s"
    # A replica leased in time ends the wait; the wait starts again when its lease is lost.
    run.lease("L2", "p2", 30)
    assert run.state.waiting_since is None
    assert T.decide(ExpireVerification(command_id="x", at=at(62)), run.state) == []
    # No policy, nothing held, or an ended task: nothing to expire.
    plain = Run([created(verify=None), leased("L1", "p1", 1, 1)])
    assert T.decide(ExpireVerification(command_id="x", at=at(9999)), plain.state) == []


def test_an_excluded_best_gives_way_to_the_best_of_the_others_in_its_class() -> None:
    # One class, four providers ranked by reputation: with the best excluded, the replica goes to the
    # next best, not to any other member (the scan of the class keeps the ranking).
    s = Scheduler()
    for pid, rep in (("p1", 1.0), ("p2", 0.3), ("p3", 0.9), ("p4", 0.6)):
        s.upsert_provider(pid, caps(2, 100), None, available=True, reputation=rep)
    s.enqueue(replica("alice.j1.0", frozenset({"p1"})))
    (a,) = s.assign()
    assert a.provider_id == "p3"
    # Equal reputations: the less loaded one (load is the ranking's second key).
    s2 = Scheduler()
    for pid in ("p1", "p2", "p3"):
        s2.upsert_provider(pid, caps(2, 100), None, available=True, reputation=0.8)
    s2.occupy("p2")
    s2.enqueue(replica("alice.j1.0", frozenset({"p1"})))
    (a,) = s2.assign()
    assert a.provider_id == "p3"


def test_a_replica_is_queued_ahead_of_its_submitter_s_waiting_tasks() -> None:
    s = Scheduler()
    s.upsert_provider("p1", caps(1, 100), None, available=True, reputation=1.0)
    s.upsert_provider("p2", caps(1, 100), None, available=True, reputation=0.9)
    s.occupy("p1")
    s.occupy("p2")  # the fleet is busy: everything waits
    for i in range(3):
        s.enqueue(PendingTask(f"alice.j1.{i + 1}", "alice", 5, "montecarlo", Resources(), Estimate()))
    s.enqueue(replica("alice.j1.0", frozenset({"p1"})), front=True)
    s.release("p2")
    (a,) = s.assign()
    assert (a.task.task_id, a.provider_id) == ("alice.j1.0", "p2")
    # Without ``front`` it would have waited behind the three.
    s3 = Scheduler()
    s3.upsert_provider("p2", caps(1, 100), None, available=True, reputation=0.9)
    s3.occupy("p2")
    for i in range(3):
        s3.enqueue(PendingTask(f"alice.j1.{i + 1}", "alice", 5, "montecarlo", Resources(), Estimate()))
    s3.enqueue(replica("alice.j1.0", frozenset({"p1"})))
    s3.release("p2")
    (b,) = s3.assign()
    assert b.task.task_id == "alice.j1.1"
