"""Cleaning: text normalisation, boilerplate lines, exact and near-duplicate removal.

Near duplicates are found with MinHash over 5-word shingles (128
permutations), LSH banding (16 bands of 8 rows), a check of the estimated
Jaccard similarity of each candidate pair against the threshold, and
union-find over the accepted pairs. Shingles are hashed with a polynomial
rolling hash computed by numpy over whole batches of documents, so the
result does not depend on Python's per-process string hashing.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

NUM_PERM = 128
BANDS, ROWS = 16, 8
SHINGLE = 5
MIN_DOC_BYTES = 64

_P = np.uint64(0x100000001B3)  # odd, so invertible modulo 2**64
_P_INV = np.uint64(pow(int(_P), -1, 2**64))
_rng = np.random.default_rng(20240521)
# Multiply-shift hashing: one odd multiplier and one offset per permutation.
_PERM_A = _rng.integers(1, 2**63, NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_PERM_B = _rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)
_WS = re.compile(rb"\s+")
_BLANK_RUNS = re.compile(r"\n{3,}")


@dataclass
class Doc:
    """One document: `source` (package) it came from, a unique `key`, the
    `group` that must stay within one split (the page itself, or a code
    directory), and its text."""
    source: str
    key: str
    group: str
    text: str


def normalise(text: str) -> str:
    """Unix newlines, no NUL, no trailing spaces, at most two blank lines in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANK_RUNS.sub("\n\n\n", text).strip("\n") + "\n"


def exact_key(text: str) -> bytes:
    """Hash of the text with all whitespace runs collapsed."""
    return hashlib.sha1(_WS.sub(b" ", text.encode()).strip()).digest()


def dedup_exact(docs: list[Doc]) -> tuple[list[Doc], int]:
    """Keep the first document (in key order) of each whitespace-normalised text."""
    seen: set[bytes] = set()
    kept = []
    for d in sorted(docs, key=lambda d: d.key):
        h = exact_key(d.text)
        if h not in seen:
            seen.add(h)
            kept.append(d)
    return kept, len(docs) - len(kept)


def _is_comment(line: str) -> bool:
    # "# " and "* " need the space: "#include" and "*ptr = 0;" are code.
    return line == "*" or line.startswith(("# ", "#!", "//", "/*", "* ", "*/", '"""', "'''"))


def remove_boilerplate(docs: list[Doc], min_docs: int = 20, min_len: int = 10,
                       comments_only: bool = False) -> tuple[list[Doc], int]:
    """Drop lines that recur in >= `min_docs` documents of one source.

    Lines shorter than `min_len` characters (once stripped) stay. For code
    (`comments_only`), only comment lines count (licence headers); a
    recurring statement is code.
    Returns the documents and the number of bytes removed.
    """
    def candidates(text):
        return {s for s in (ln.strip() for ln in text.split("\n"))
                if len(s) >= min_len and (not comments_only or _is_comment(s))}

    counts: dict[str, Counter] = {}
    for d in docs:
        counts.setdefault(d.source, Counter()).update(candidates(d.text))
    removed = 0
    out = []
    for d in docs:
        # Only candidate lines were counted, so any other line reads as 0.
        c = counts[d.source]
        lines = d.text.split("\n")
        keep = [ln for ln in lines if c.get(ln.strip(), 0) < min_docs]
        if len(keep) != len(lines):
            new = normalise("\n".join(keep))
            removed += len(d.text.encode()) - len(new.encode())
            d = Doc(d.source, d.key, d.group, new)
        out.append(d)
    return out, removed


def _shingle_hashes(texts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every 5-word shingle of each text, and each text's start offset.

    Texts are whitespace-collapsed and joined by a space-separated marker so
    one rolling-hash pass serves the batch; shingles spanning two texts are
    dropped; a text with fewer than 5 words gets one shingle of all its words.
    """
    norm = [_WS.sub(b" ", t).strip() or b"." for t in texts]
    buf = np.frombuffer(b" ".join(norm), dtype=np.uint8)
    lens = np.array([len(t) for t in norm])
    doc_start = np.concatenate([[0], np.cumsum(lens + 1)[:-1]])
    sp = buf == 32
    prev_sp = np.concatenate([[True], sp[:-1]])
    next_sp = np.concatenate([sp[1:], [True]])
    starts = np.flatnonzero(~sp & prev_sp)
    ends = np.flatnonzero(~sp & next_sp) + 1
    word_doc = np.searchsorted(doc_start, starts, side="right") - 1
    n = len(buf)
    pw = np.cumprod(np.full(n, _P, dtype=np.uint64))
    pw = np.concatenate([[np.uint64(1)], pw[:-1]])
    inv = np.cumprod(np.full(n, _P_INV, dtype=np.uint64))
    inv = np.concatenate([[np.uint64(1)], inv[:-1]])
    pref = np.concatenate([[np.uint64(0)], np.cumsum((buf.astype(np.uint64) + np.uint64(1)) * pw)])

    def span(s_idx, e_idx):
        return (pref[ends[e_idx]] - pref[starts[s_idx]]) * inv[starts[s_idx]]

    k = SHINGLE - 1
    first = np.arange(len(starts) - k)
    same = word_doc[first] == word_doc[first + k]
    first = first[same]
    hashes, owner = span(first, first + k), word_doc[first]
    # Texts too short for one full shingle: hash all their words.
    words_per_doc = np.bincount(word_doc, minlength=len(texts))
    short = np.flatnonzero(words_per_doc < SHINGLE)
    if len(short):
        fw = np.searchsorted(word_doc, short)
        lw = fw + words_per_doc[short] - 1
        hashes = np.concatenate([hashes, span(fw, lw)])
        owner = np.concatenate([owner, short])
        order = np.argsort(owner, kind="stable")
        hashes, owner = hashes[order], owner[order]
    offsets = np.searchsorted(owner, np.arange(len(texts)))
    return hashes, offsets


def minhash(texts: list[bytes], batch_bytes: int = 4_000_000) -> np.ndarray:
    """MinHash signatures, shape (len(texts), 128), dtype uint32."""
    sig = np.empty((len(texts), NUM_PERM), dtype=np.uint32)
    i = 0
    while i < len(texts):
        j, size = i, 0
        while j < len(texts) and (j == i or size + len(texts[j]) <= batch_bytes):
            size += len(texts[j])
            j += 1
        hashes, offsets = _shingle_hashes(texts[i:j])
        for g in range(0, NUM_PERM, 16):
            h = (hashes[:, None] * _PERM_A[None, g:g + 16] + _PERM_B[None, g:g + 16]) >> np.uint64(32)
            sig[i:j, g:g + 16] = np.minimum.reduceat(h, offsets, axis=0)
        i = j
    return sig


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # The smaller index becomes the root, so cluster roots are stable.
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicate_pairs(sig: np.ndarray, threshold: float = 0.8) -> np.ndarray:
    """Pairs (i, j) sharing an LSH band whose estimated Jaccard >= threshold."""
    n = len(sig)
    pairs = []
    mix = (np.arange(1, ROWS + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
    for b in range(BANDS):
        band = sig[:, b * ROWS:(b + 1) * ROWS].astype(np.uint64)
        key = (band * mix).sum(axis=1) ^ (band[:, 0] << np.uint64(32))
        order = np.argsort(key, kind="stable")
        k = key[order]
        same = np.flatnonzero(k[1:] == k[:-1]) + 1
        if not len(same):
            continue
        # Pair each bucket member with the bucket's first member.
        is_start = np.ones(n, dtype=bool)
        is_start[same] = False
        bucket_first = order[np.maximum.accumulate(np.where(is_start, np.arange(n), 0))]
        pairs.append(np.stack([bucket_first[same], order[same]], axis=1))
    if not pairs:
        return np.empty((0, 2), dtype=np.int64)
    cand = np.unique(np.sort(np.concatenate(pairs), axis=1), axis=0)
    cand = cand[cand[:, 0] != cand[:, 1]]
    est = (sig[cand[:, 0]] == sig[cand[:, 1]]).mean(axis=1)
    return cand[est >= threshold]


def near_duplicate_clusters(texts: list[bytes], threshold: float = 0.8) -> UnionFind:
    sig = minhash(texts)
    uf = UnionFind(len(texts))
    for a, b in near_duplicate_pairs(sig, threshold):
        uf.union(int(a), int(b))
    return uf


def dedup_near(docs: list[Doc], threshold: float = 0.8) -> tuple[list[Doc], dict]:
    """Keep one document (the first in key order) of each near-duplicate cluster."""
    docs = sorted(docs, key=lambda d: d.key)
    uf = near_duplicate_clusters([d.text.encode() for d in docs], threshold)
    roots = [uf.find(i) for i in range(len(docs))]
    sizes = Counter(roots)
    kept = [d for i, d in enumerate(docs) if roots[i] == i]
    return kept, {"near_dup_clusters": sum(1 for s in sizes.values() if s > 1),
                  "near_dup_removed": len(docs) - len(kept)}


_CODE_LINE = re.compile(r"([;{}]\s*$|^\s*(#include|#define|\$ |>>> |import |from \S+ import|def |return\b))")


def code_fraction(text: str) -> float:
    """Share of non-blank lines that look like code (C, shell or Python)."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if not lines:
        return 0.0
    return sum(1 for ln in lines if _CODE_LINE.search(ln)) / len(lines)
