"""Properties of the transparency log: every proof the builder makes verifies, and nothing altered does.

The reference is the naive RFC 9162 definition, written here again recursively (MTH(D[n]) splits at
the largest power of two below n), independent of the module's level-by-level ``merkle_root``.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.tlog import (
    EMPTY_ROOT,
    BadProof,
    BadSignature,
    Checkpoint,
    CompactTree,
    HistoryRewritten,
    NoteKey,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    new_signing_seed,
    open_checkpoint,
    sign_checkpoint,
    stored_subtree,
    verify_consistency,
    verify_inclusion,
)


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1, literally."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def _tree(n: int) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Leaves, their hashes, and the stored hashes of a tree of ``n``."""
    leaves = [f"entry {i}".encode() for i in range(n)]
    hashes = [leaf_hash(x) for x in leaves]
    stored: list[bytes] = []
    tree = CompactTree()
    for x in hashes:
        stored.extend(tree.append(x))
    return leaves, hashes, stored


def _flip(b: bytes, bit: int) -> bytes:
    i = (bit // 8) % len(b)
    return b[:i] + bytes([b[i] ^ (1 << (bit % 8))]) + b[i + 1 :]


N = 33
LEAVES, HASHES, STORED = _tree(N)


def _read(indexes):  # type: ignore[no-untyped-def]
    return [STORED[i] for i in indexes]


def _subtree(lo: int, hi: int) -> bytes:
    return stored_subtree(lo, hi, _read)


def test_every_root_and_every_proof_of_every_small_tree() -> None:
    roots = [mth(LEAVES[:n]) for n in range(N + 1)]
    assert roots[0] == EMPTY_ROOT
    for n in range(1, N + 1):
        assert merkle_root(HASHES[:n]) == roots[n]
        assert CompactTree.from_stored(n, _read).root() == roots[n]
        for i in range(n):
            verify_inclusion(i, n, HASHES[i], inclusion_proof(i, n, _subtree), roots[n])
        for m in range(n + 1):
            verify_consistency(m, n, roots[m], roots[n], consistency_proof(m, n, _subtree))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, N), st.data())
def test_an_altered_inclusion_proof_leaf_index_size_or_root_fails(n: int, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, n - 1))
    root = mth(LEAVES[:n])
    proof = inclusion_proof(i, n, _subtree)
    what = data.draw(st.sampled_from(["leaf", "index", "size", "root", "proof", "drop", "add"]))
    bit = data.draw(st.integers(0, 255))
    leaf, index, size, r, p = HASHES[i], i, n, root, list(proof)
    if what == "leaf":
        leaf = _flip(leaf, bit)
    elif what == "index":
        index = data.draw(st.integers(0, n - 1).filter(lambda x: x != i))
        if HASHES[index] == HASHES[i]:  # pragma: no cover - distinct entries
            return
    elif what == "size":
        # Another size, with that size's genuine root: a checkpoint signs the two together. (The
        # same proof against this root and another size of the same shape can verify: RFC 9162
        # binds the size to the root only through the signed checkpoint.)
        sizes = [x for x in range(i + 1, N + 1) if x != n]
        if not sizes:
            return
        size = data.draw(st.sampled_from(sizes))
        r = mth(LEAVES[:size])
    elif what == "root":
        r = _flip(root, bit)
    elif what == "proof":
        if not p:
            return
        j = data.draw(st.integers(0, len(p) - 1))
        p[j] = _flip(p[j], bit)
    elif what == "drop":
        if not p:
            return
        p.pop(data.draw(st.integers(0, len(p) - 1)))
    else:
        p.insert(data.draw(st.integers(0, len(p))), leaf_hash(bytes([bit])))
    try:
        verify_inclusion(index, size, leaf, p, r)
    except BadProof:
        return
    pytest.fail(f"altered ({what}) inclusion proof of {i} in {n} verified")


@settings(max_examples=300, deadline=None)
@given(st.integers(1, N), st.data())
def test_a_rewritten_history_never_passes_a_consistency_check(n: int, data: st.DataObject) -> None:
    m = data.draw(st.integers(1, n))
    # The new log has one entry of the old one changed (and maybe more appended).
    victim = data.draw(st.integers(0, m - 1))
    rewritten = list(LEAVES[:n])
    rewritten[victim] = rewritten[victim] + b" (edited)"
    hashes = [leaf_hash(x) for x in rewritten]

    def sub(lo: int, hi: int) -> bytes:
        return merkle_root(hashes[lo:hi])

    old_root, new_root = mth(LEAVES[:m]), mth(rewritten)
    with pytest.raises(HistoryRewritten):
        verify_consistency(m, n, old_root, new_root, consistency_proof(m, n, sub))
    # And a genuine proof, altered in any way, fails too.
    proof = consistency_proof(m, n, _subtree)
    good_new = mth(LEAVES[:n])
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[j] = _flip(bad[j], data.draw(st.integers(0, 255)))
        with pytest.raises(HistoryRewritten):
            verify_consistency(m, n, old_root, good_new, bad)
    if m < n:
        with pytest.raises(HistoryRewritten):
            verify_consistency(m, n, _flip(old_root, 3), good_new, proof)


SEED = new_signing_seed()
KEY = NoteKey.of_seed("gpufleet/props", SEED)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**12), st.binary(min_size=32, max_size=32), st.integers(0, 10_000))
def test_any_altered_byte_of_a_signed_checkpoint_is_refused(size: int, root: bytes, where: int) -> None:
    cp = Checkpoint("gpufleet/props", size, root)
    note = sign_checkpoint(cp, SEED)
    assert open_checkpoint(note, KEY) == cp
    raw = note.encode()
    i = where % len(raw)
    altered = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
    try:
        text = altered.decode()
    except UnicodeDecodeError:
        return
    try:
        got = open_checkpoint(text, KEY)
    except BadSignature:
        return
    # Only a change the signature does not cover may pass, and then it must say the same thing.
    assert got == cp, f"altered byte {i} gave {got}"
