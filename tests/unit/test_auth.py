"""Identities without a server: ADR-14 JWTs, the authority's keys and registry, the roles' templates,
reading an identity back from a credentials file, and who may read which log streams."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import nkeys
import pytest

from events.identity import CredentialsError, identity_of_jwt, inbox_prefix, read_credentials
from events.subjects import object_name, object_owner, object_reader, outcomes_stream_of, readable
from gpufleet.auth import ROLE_RULES, AuthError, Authority
from gpufleet.auth.jwt import claims_of, encode, new_key, public_key
from gpufleet.auth.roles import EDGE_ACCOUNT, HUB_ACCOUNT, edge_imports, hub_exports

SHA = "ab" * 32


def _segments(jwt: str) -> list[bytes]:
    return [base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in jwt.split(".")]


def test_a_jwt_is_adr14_shaped_and_verifies_with_the_signer_key() -> None:
    op = new_key("operator")
    jwt = encode({"name": "x", "sub": public_key(op), "nats": {"type": "operator", "version": 2}}, op, iat=123)
    header, body, sig = _segments(jwt)
    assert json.loads(header) == {"typ": "JWT", "alg": "ed25519-nkey"}
    claims = json.loads(body)
    assert claims["iss"] == public_key(op) and claims["iat"] == 123
    # jti: base32 of the sha256 of the claims with an empty jti.
    blank = {**claims, "jti": ""}
    digest = hashlib.sha256(json.dumps(blank, separators=(",", ":")).encode()).digest()
    assert claims["jti"] == base64.b32encode(digest).decode().rstrip("=")
    signing_input = jwt.rsplit(".", 1)[0].encode()
    assert op.verify(signing_input, sig)
    with pytest.raises(nkeys.ErrInvalidSignature):
        op.verify(signing_input + b"x", sig)
    with pytest.raises(nkeys.ErrInvalidSignature):
        new_key("operator").verify(signing_input, sig)


def test_keys_are_created_once_with_private_modes(tmp_path: Path) -> None:
    a = Authority.open(tmp_path / "auth")
    seeds = sorted((tmp_path / "auth").glob("*.nk"))
    assert len(seeds) >= 9  # operator, three accounts, five roles, and the bearer key
    for p in seeds:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "auth").stat().st_mode) == 0o700
    again = Authority.open(tmp_path / "auth")
    assert again.operator_key == a.operator_key and again.account_key(HUB_ACCOUNT) == a.account_key(HUB_ACCOUNT)
    with pytest.raises(AuthError, match="run `gpufleet up`"):
        Authority.open(tmp_path / "nothing", create=False)
    (tmp_path / "auth" / "signing-admin.nk").unlink()
    with pytest.raises(AuthError, match="incomplete"):
        Authority.open(tmp_path / "auth")


def test_a_user_is_signed_by_its_role_key_and_carries_no_permissions_of_its_own(tmp_path: Path) -> None:
    a = Authority.open(tmp_path / "auth")
    creds = tmp_path / "p.creds"
    creds.write_text(a.issue("provider", "gpu-7"))
    ident = read_credentials(creds)
    assert (ident.role, ident.name) == ("provider", "gpu-7")
    jwt = creds.read_text().split("-----BEGIN NATS USER JWT-----")[1].split("------END")[0].strip()
    claims = claims_of(jwt)
    nats = claims["nats"]
    assert nats["issuer_account"] == a.account_key(EDGE_ACCOUNT)
    assert "pub" not in nats and "sub" not in nats and "subs" not in nats  # a scoped user: the key's template
    account = claims_of(a.account_jwt(EDGE_ACCOUNT))
    (key,) = [k for k in account["nats"]["signing_keys"] if k["role"] == "provider"]
    assert claims["iss"] == key["key"]
    assert "gf.in.provider.{{name()}}.>" in key["template"]["pub"]["allow"]


@pytest.mark.parametrize(
    ("role", "name", "problem"),
    [
        ("emperor", "x", "unknown role"),
        ("submitter", "two words", "name"),
        ("provider", "a.b", "name"),
        ("auditor", "", "name"),
    ],
)
def test_issuing_refuses_unknown_roles_and_names_that_are_not_one_token(
    tmp_path: Path, role: str, name: str, problem: str
) -> None:
    with pytest.raises(AuthError, match=problem):
        Authority.open(tmp_path / "auth").issue(role, name)


def test_bearer_credentials_are_for_submitters_only(tmp_path: Path) -> None:
    a = Authority.open(tmp_path / "auth")
    with pytest.raises(AuthError, match="bearer"):
        a.issue("provider", "p", bearer=True)
    jwt = a.issue("submitter", "bash", bearer=True).split("-----BEGIN NATS USER JWT-----")[1].split("------END")[0]
    account = claims_of(a.account_jwt(EDGE_ACCOUNT))
    (key,) = [k for k in account["nats"]["signing_keys"] if k["role"] == "submitter-bearer"]
    assert claims_of(jwt.strip())["iss"] == key["key"] and key["template"]["bearer_token"] is True


def test_revocation_names_every_key_of_the_identity_and_survives_a_reload(tmp_path: Path) -> None:
    a = Authority.open(tmp_path / "auth")
    first = read_credentials(_write(tmp_path / "1.creds", a.issue("provider", "p1")))
    second = read_credentials(_write(tmp_path / "2.creds", a.issue("provider", "p1")))
    other = read_credentials(_write(tmp_path / "3.creds", a.issue("provider", "p2")))
    assert set(a.revoke("provider", "p1")) == {first.public_key, second.public_key}
    assert a.revoke("provider", "p1") == []  # nothing left to revoke
    revocations = claims_of(Authority.open(tmp_path / "auth").account_jwt(EDGE_ACCOUNT))["nats"]["revocations"]
    assert set(revocations) == {first.public_key, second.public_key}
    assert other.public_key not in revocations
    # An account JWT signed again is always newer than the last, or the server would keep the old one.
    b = Authority.open(tmp_path / "auth")
    assert claims_of(b.account_jwt(EDGE_ACCOUNT))["iat"] < claims_of(b.account_jwt(EDGE_ACCOUNT))["iat"]


def test_rotation_revokes_the_old_credential_and_issues_a_new_one(tmp_path: Path) -> None:
    a = Authority.open(tmp_path / "auth")
    old = read_credentials(_write(tmp_path / "old.creds", a.issue("submitter", "ann")))
    new = read_credentials(_write(tmp_path / "new.creds", a.issue("submitter", "ann", rotate=True)))
    assert a.is_revoked(old.public_key) and not a.is_revoked(new.public_key)


def test_the_network_s_own_identities_are_kept_and_reissued_once_revoked(tmp_path: Path) -> None:
    a = Authority.open(tmp_path / "auth")
    path = a.own_creds("orchestrator", "orchestrator")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert a.own_creds("orchestrator", "orchestrator") == path
    key = read_credentials(path).public_key
    assert a.own_creds("orchestrator", "orchestrator").read_text() == path.read_text()
    a.revoke("orchestrator", "orchestrator")
    assert read_credentials(a.own_creds("orchestrator", "orchestrator")).public_key != key


def test_the_edge_imports_every_hub_export_and_stays_without_jetstream(tmp_path: Path) -> None:
    a = Authority.open(tmp_path / "auth")
    exports = {e["subject"] for e in hub_exports()}
    imports = {i["subject"] for i in edge_imports(a.account_key(HUB_ACCOUNT))}
    assert exports == imports
    edge = claims_of(a.account_jwt(EDGE_ACCOUNT))["nats"]
    assert "disk_storage" not in edge["limits"] and "mem_storage" not in edge["limits"]
    hub = claims_of(a.account_jwt(HUB_ACCOUNT))["nats"]["limits"]
    assert hub["disk_storage"] > 0 and hub["streams"] > 0 and hub["consumer"] > 0
    # Nobody in the edge may write the domain log or dispatch, or manage streams.
    for rules in ROLE_RULES.values():
        if rules.account != EDGE_ACCOUNT:
            continue
        for subject in rules.pub_allow:
            assert not subject.startswith(("gf.ev", "gf.dispatch", "$JS.API.STREAM.CREATE", "$JS.API.CONSUMER.CREATE"))
        # They read their own inbox, and live progress (core NATS, never stored): a submitter its own
        # jobs' only, an auditor everyone's; a provider none.
        live = {"submitter": ("gf.live.{{name()}}.>",), "auditor": ("gf.live.>",)}.get(rules.role, ())
        for subject in rules.sub_allow:
            assert subject.startswith(f"_INBOX.{rules.role}.{{{{name()}}}}.") or subject in live


def test_only_the_orchestrator_writes_the_domain_log_and_only_the_admin_manages_streams() -> None:
    orch, admin = ROLE_RULES["orchestrator"], ROLE_RULES["admin"]
    assert "gf.ev.>" in orch.pub_allow and "gf.dispatch.>" in orch.pub_allow
    assert not any(s.startswith("$JS.API.STREAM.CREATE") or s == "$JS.API.>" for s in orch.pub_allow)
    assert "$JS.API.>" in admin.pub_allow and {"gf.ev.>", "gf.dispatch.>", "gf.in.>"} <= set(admin.pub_deny)


def test_reading_an_identity_back_from_a_credentials_file(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="no credentials file"):
        read_credentials(tmp_path / "none.creds")
    (tmp_path / "junk.creds").write_text("hello")
    with pytest.raises(CredentialsError, match="not a NATS credentials file"):
        read_credentials(tmp_path / "junk.creds")
    user = new_key("user")
    acc = new_key("account")
    plain = encode({"name": "x", "sub": public_key(user), "nats": {"type": "user", "version": 2}}, acc)
    with pytest.raises(CredentialsError, match="not a gpufleet identity"):
        identity_of_jwt(plain)
    assert inbox_prefix("submitter", "ann") == "_INBOX.submitter.ann"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


@pytest.mark.parametrize(
    ("role", "name", "stream", "ok"),
    [
        ("submitter", "ann", "job.ann.j1", True),
        ("submitter", "ann", "task.ann.j1.*", True),
        ("submitter", "ann", "task.ann.>", True),
        ("submitter", "ann", "intake.submitter.ann", True),
        ("submitter", "ann", "job.bob.j1", False),
        ("submitter", "ann", "job.*.j1", False),
        ("submitter", "ann", "job.>", False),
        ("submitter", "ann", "task.ann", False),
        ("submitter", "ann", "intake.submitter.bob", False),
        ("submitter", "ann", "provider.p1", False),
        ("submitter", "ann", "job.ann.j*", False),
        ("submitter", "ann", "job.ann..j1", False),
        ("submitter", "ann", "job.ann.>.x", False),
        ("provider", "p1", "provider.p1", True),
        ("provider", "p1", "intake.provider.p1", True),
        ("provider", "p1", "provider.p2", False),
        ("provider", "p1", "job.p1.j1", False),
        ("auditor", "aud", "job.bob.>", True),
        ("auditor", "aud", ">", True),
        ("orchestrator", "o", "job.ann.j1", False),
    ],
)
def test_who_may_read_which_log_streams(role: str, name: str, stream: str, ok: bool) -> None:
    assert readable(role, name, stream) is ok


def test_objects_are_named_by_writer_and_results_by_reader() -> None:
    assert object_owner(object_name("submitter", "ann", SHA)) == ("submitter", "ann")
    result = object_name("provider", "gpu1", SHA, for_submitter="ann")
    assert result == f"result.ann.gpu1.{SHA}"
    assert object_owner(result) == ("provider", "gpu1") and object_reader(result) == "ann"
    assert object_reader(object_name("provider", "gpu1", SHA)) is None
    for name in ("checkpoints/t1/5", f"x.y.{SHA}", f"provider.p.{SHA[:-1]}", f"result.a.{SHA}"):
        assert object_owner(name) is None


@pytest.mark.parametrize(
    ("subject", "stream"),
    [
        ("gf.in.submitter.ann.submit.j1", "intake.submitter.ann"),
        ("gf.in.provider.p1.report.ann.j1.0", "intake.provider.p1"),
        ("gf.in.job.j1.submit", "intake.job.j1"),
        ("gf.in.x", "intake.outcomes"),
        ("gf.in.submitter.-bad.submit.j1", "intake.outcomes"),
    ],
)
def test_an_outcome_is_recorded_in_its_sender_s_stream(subject: str, stream: str) -> None:
    assert outcomes_stream_of(subject) == stream
