"""The transparency log's pure core against published vectors and a naive reference.

Vectors: the Merkle tree of RFC 6962's reference leaves, its roots and proofs (as used by
transparency-dev/merkle ``proof/verify_test.go`` and certificate-transparency-go), and the signed
notes of Go's ``golang.org/x/mod/sumdb/note`` tests and the C2SP ``signed-note`` spec. Ed25519 is
deterministic, so signing the Go test text with its key must give its published note byte for byte.
"""

from __future__ import annotations

import base64

import nkeys
import pytest

from events.codec import decode_message, encode
from events.envelope import new_envelope
from events.tlog import (
    EMPTY_ROOT,
    BadProof,
    BadSignature,
    Checkpoint,
    CompactTree,
    HistoryRewritten,
    NoteKey,
    canonical_bytes,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    new_signing_seed,
    node_hash,
    open_checkpoint,
    open_note,
    parse_leaf,
    sign_checkpoint,
    sign_note,
    stored_hash_count,
    stored_hash_index,
    stored_leaf_bytes,
    stored_subtree,
    verify_consistency,
    verify_inclusion,
)
from tests.factories import created

h = bytes.fromhex

LEAVES = [
    h(x) for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")
]
ROOTS = [
    h(x)
    for x in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
# (leaf number, 1-based; tree size; proof)
INCLUSION = [
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        2,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CONSISTENCY = [
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]

GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_SIG = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n"
    "\u2014 example.com/foo "
    "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)


def _hashes() -> list[bytes]:
    return [leaf_hash(x) for x in LEAVES]


def _subtree(hashes: list[bytes]):  # type: ignore[no-untyped-def]
    return lambda lo, hi: merkle_root(hashes[lo:hi])


def _go_seed() -> bytes:
    raw = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert raw[0] == 1
    return bytes(nkeys.encode_seed(raw[1:], nkeys.PREFIX_BYTE_SERVER))


def test_roots_of_the_reference_tree() -> None:
    hashes = _hashes()
    assert merkle_root([]) == EMPTY_ROOT == h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    for n in range(1, 9):
        assert merkle_root(hashes[:n]) == ROOTS[n - 1], n
        tree = CompactTree()
        for x in hashes[:n]:
            tree.append(x)
        assert tree.root() == ROOTS[n - 1], n


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION)
def test_inclusion_vectors(leaf: int, size: int, proof: list[str]) -> None:
    hashes = _hashes()
    want = [h(x) for x in proof]
    assert inclusion_proof(leaf - 1, size, _subtree(hashes)) == want
    verify_inclusion(leaf - 1, size, hashes[leaf - 1], want, ROOTS[size - 1])
    bad = [
        (leaf - 2, size, hashes[leaf - 1], want, ROOTS[size - 1]),
        (leaf, size, hashes[leaf - 1], want, ROOTS[size - 1]),
        (leaf - 1, size * 2, hashes[leaf - 1], want, ROOTS[size - 1]),
        (leaf - 1, size, leaf_hash(b"WrongLeaf"), want, ROOTS[size - 1]),
        (leaf - 1, size, hashes[leaf - 1], want, EMPTY_ROOT),
        (leaf - 1, size, hashes[leaf - 1], [*want, ROOTS[size - 1]], ROOTS[size - 1]),
        (leaf - 1, size, hashes[leaf - 1], [ROOTS[size - 1], *want], ROOTS[size - 1]),
        (leaf - 1, size, hashes[leaf - 1], want[:-1], ROOTS[size - 1]),
        (leaf - 1, size, hashes[leaf - 1], [bytes([want[0][0] ^ 8]) + want[0][1:], *want[1:]], ROOTS[size - 1]),
    ]
    for args in bad:
        with pytest.raises(BadProof):
            verify_inclusion(*args)


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_vectors(old: int, new: int, proof: list[str]) -> None:
    hashes = _hashes()
    want = [h(x) for x in proof]
    assert consistency_proof(old, new, _subtree(hashes)) == want
    r1, r2 = ROOTS[old - 1], ROOTS[new - 1]
    verify_consistency(old, new, r1, r2, want)
    bad = [
        (old - 1, new, r1, r2, want),
        (old + 1, new, r1, r2, want),
        (old, new * 2, r1, r2, want),
        (old, new, EMPTY_ROOT, r2, want),
        (old, new, r1, EMPTY_ROOT, want),
        (old, new, r2, r1, want),
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*want, r1]),
        (old, new, r1, r2, [r2, *want]),
        (old, new, r1, r2, want[:-1]),
        (old, new, r1, r2, [bytes([want[-1][0] ^ 16]) + want[-1][1:], *want[:-1]][::-1]),
    ]
    for args in bad:
        with pytest.raises(HistoryRewritten):
            verify_consistency(*args)


def test_trivial_consistency() -> None:
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, ROOTS[4], [])
    verify_consistency(3, 3, ROOTS[2], ROOTS[2], [])
    for args in [
        (3, 3, ROOTS[2], ROOTS[3], []),
        (4, 3, ROOTS[3], ROOTS[2], []),
        (0, 1, EMPTY_ROOT, ROOTS[0], [ROOTS[0]]),
    ]:
        with pytest.raises(HistoryRewritten):
            verify_consistency(*args)


def test_stored_hashes_give_every_subtree_and_restore_the_frontier() -> None:
    hashes = [leaf_hash(bytes([i])) for i in range(37)]
    stored: list[bytes] = []
    tree = CompactTree()
    for x in hashes:
        stored.extend(tree.append(x))
        assert len(stored) == stored_hash_count(tree.size)
    # Go's tlog: level 0 at 0, 1, 3, 4, 7, ...; level 1's n-th right after level 0's 2n+1-th.
    assert [stored_hash_index(0, n) for n in range(5)] == [0, 1, 3, 4, 7]
    assert stored_hash_index(1, 0) == 2 and stored_hash_index(2, 0) == 6

    def read(indexes):  # type: ignore[no-untyped-def]
        return [stored[i] for i in indexes]

    for n in range(1, 38):
        assert stored_subtree(0, n, read) == merkle_root(hashes[:n])
        assert CompactTree.from_stored(n, read).root() == merkle_root(hashes[:n])
    assert stored_subtree(32, 37, read) == merkle_root(hashes[32:37])
    with pytest.raises(BadProof):
        stored_subtree(3, 7, read)  # not a subtree of the log: never asked for by a proof


def test_the_go_note_vector_is_reproduced_and_verifies() -> None:
    seed = _go_seed()
    key = NoteKey.of_seed("PeterNeumann", seed)
    assert key.vkey == GO_VKEY
    assert NoteKey.parse(GO_VKEY) == key
    note = sign_note(GO_TEXT, "PeterNeumann", seed)
    assert note == f"{GO_TEXT}\n\u2014 PeterNeumann {GO_SIG}\n"
    assert open_note(note, key) == GO_TEXT
    with pytest.raises(BadSignature):
        open_note(note.replace("cryptography", "cryptographY"), key)


def test_the_c2sp_spec_note_verifies() -> None:
    key = NoteKey.parse(SPEC_VKEY)
    assert open_note(SPEC_NOTE, key) == "This is an example message.\n"
    with pytest.raises(BadSignature):
        open_note(SPEC_NOTE.replace("example message", "example massage"), key)
    with pytest.raises(BadSignature):
        open_note(SPEC_NOTE, NoteKey.parse(GO_VKEY))  # not signed by this key


def test_a_checkpoint_signed_by_another_key_or_altered_is_refused() -> None:
    seed, other = new_signing_seed(), new_signing_seed()
    key = NoteKey.of_seed("gpufleet/test", seed)
    cp = Checkpoint("gpufleet/test", 8, ROOTS[7])
    note = sign_checkpoint(cp, seed)
    assert open_checkpoint(note, key) == cp
    assert cp.body() == f"gpufleet/test\n8\n{base64.b64encode(ROOTS[7]).decode()}\n"
    forged = sign_checkpoint(Checkpoint("gpufleet/test", 9, ROOTS[7]), other)
    altered = note.replace("\n8\n", "\n9\n")
    for bad in (forged, altered, note.replace("gpufleet/test\n", "gpufleet/tesT\n", 1), "", "junk\n"):
        with pytest.raises(BadSignature):
            open_checkpoint(bad, key)
    for bad_key in ("", "x+1+2", "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"):
        with pytest.raises(BadSignature):
            NoteKey.parse(bad_key)
    assert key.nkey.startswith("N") and nkeys.from_seed(seed).public_key.decode() == key.nkey


def test_leaf_bytes_of_a_stored_event_are_its_canonical_bytes() -> None:
    base = created("task.alice.j1.0", params={"b": [1, 2], "a": "x"})
    env = new_envelope(base.subject, base.data, id="e-1", source="tests", correlationid="c1").at_position(42)
    body, headers = encode(env)
    stored = stored_leaf_bytes(42, env.subject, body, headers)
    assert stored == canonical_bytes(env)
    fields = parse_leaf(stored)
    assert (fields.position, fields.event_id, fields.stream, fields.body) == (42, env.id, env.subject, body)
    assert decode_message(fields.stream, fields.body, fields.headers(), fields.position) == env
    with pytest.raises(BadProof):
        parse_leaf(b"not a leaf")


def test_node_hash_is_domain_separated() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) != leaf_hash(a + b)
    assert merkle_root([a, b]) == node_hash(a, b)
