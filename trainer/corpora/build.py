"""The build pipeline: sources -> clean -> dedup -> split -> ROOT/<name>/{train,val}.bin.

A distribution is built in a temporary directory, renamed into place, and
only then marked complete (`ROOT/<name>/.complete`, holding the build
parameters). A later build reuses a distribution whose marker matches the
current parameters and rebuilds anything else, so an interrupted build is
never trusted. The top-level manifest lists complete distributions only.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

from trainer.corpora import clean
from trainer.corpora.clean import Doc
from trainer.corpora.sources import DISTRIBUTIONS, MAX_DOC_BYTES, ensure_free, load_source
from trainer.corpora.store import DOC_END, SPLITS, check_name, documents, open_split, split_stats
from trainer.files import atomic_write_bytes, atomic_write_json

SCHEMA_VERSION = 1
PIPELINE_VERSION = 5
VAL_BYTES = 1_500_000
CODE_HEAVY = 0.3
MARKER = ".complete"


def build_params(name: str) -> dict:
    dist = DISTRIBUTIONS[name]
    return {
        "pipeline_version": PIPELINE_VERSION,
        "sources": [s.package for s in dist.sources],
        "min_doc_bytes": clean.MIN_DOC_BYTES, "max_doc_bytes": MAX_DOC_BYTES,
        "boilerplate": {"min_docs": 20, "min_line_chars": dist.boilerplate_min_len,
                        "comment_lines_only": dist.code},
        "minhash": {"shingle_words": clean.SHINGLE, "permutations": clean.NUM_PERM,
                    "bands": clean.BANDS, "rows": clean.ROWS, "jaccard": 0.8},
        "drop_code_heavy_above": CODE_HEAVY if dist.drop_code_heavy else None,
        "max_bytes_before_dedup": dist.max_bytes,
        "val_bytes": VAL_BYTES,
        "split_unit": "directory" if dist.code else "document",
    }


def _h(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _nbytes(docs: list[Doc]) -> int:
    return sum(len(d.text.encode()) for d in docs)


def cap_by_group(docs: list[Doc], max_bytes: int) -> list[Doc]:
    """Whole groups, in a stable hash order, until `max_bytes` is reached."""
    groups: dict[str, list[Doc]] = {}
    for d in docs:
        groups.setdefault(d.group, []).append(d)
    kept, total = [], 0
    for g in sorted(groups, key=_h):
        if total >= max_bytes:
            break
        kept += groups[g]
        total += _nbytes(groups[g])
    return kept


def split_docs(docs: list[Doc], val_bytes: int | None = None) -> tuple[list[Doc], list[Doc]]:
    """Whole groups, in a stable hash order, to validation until it holds
    `val_bytes` (default `VAL_BYTES`, at most a tenth of the data); the rest
    to train. Groups larger than a quarter of the validation size go to
    train so the validation size stays near its target. Documents within a
    split are ordered by a hash of their key."""
    groups: dict[str, list[Doc]] = {}
    for d in docs:
        groups.setdefault(d.group, []).append(d)
    val_bytes = min(VAL_BYTES if val_bytes is None else val_bytes, _nbytes(docs) // 10)
    val, train, size = [], [], 0
    for g in sorted(groups, key=_h):
        gb = _nbytes(groups[g])
        if size < val_bytes and gb <= val_bytes / 4:
            val += groups[g]
            size += gb
        else:
            train += groups[g]
    return sorted(train, key=lambda d: _h(d.key)), sorted(val, key=lambda d: _h(d.key))


def encode_split(docs: list[Doc]) -> bytes:
    return b"".join(d.text.encode() + DOC_END for d in docs)


def clean_docs(name: str, docs: list[Doc], log: Callable[[str], None]) -> tuple[list[Doc], dict]:
    """Normalise, filter by size (and code share for prose), cap, exact
    dedup, strip boilerplate, near dedup; returns the documents and statistics."""
    dist = DISTRIBUTIONS[name]
    stats = {"documents_in": len(docs), "bytes_in": _nbytes(docs)}
    docs = [Doc(d.source, d.key, d.group, clean.normalise(d.text)) for d in docs]
    sized = [d for d in docs if clean.MIN_DOC_BYTES <= len(d.text.encode()) <= MAX_DOC_BYTES]
    stats["size_filtered"] = len(docs) - len(sized)
    docs = sized
    if dist.drop_code_heavy:
        prose = [d for d in docs if clean.code_fraction(d.text) <= CODE_HEAVY]
        stats["code_heavy_removed"] = len(docs) - len(prose)
        docs = prose
    if dist.max_bytes:
        before = len(docs)
        docs = cap_by_group(docs, dist.max_bytes)
        stats["subsampled_out"] = before - len(docs)
    stats["documents_into_dedup"] = len(docs)
    t = time.time()
    docs, stats["exact_dups_removed"] = clean.dedup_exact(docs)
    log(f"exact dedup: {stats['exact_dups_removed']} removed ({time.time() - t:.1f} s)")
    t = time.time()
    docs, stats["boilerplate_bytes_removed"] = clean.remove_boilerplate(
        docs, min_len=dist.boilerplate_min_len, comments_only=dist.code)
    kept = [d for d in docs if len(d.text.encode()) >= clean.MIN_DOC_BYTES]
    stats["emptied_by_boilerplate"] = len(docs) - len(kept)
    docs = kept
    log(f"boilerplate: {stats['boilerplate_bytes_removed'] / 1e6:.2f} MB removed ({time.time() - t:.1f} s)")
    t = time.time()
    docs, near = clean.dedup_near(docs)
    stats.update(near)
    log(f"near dedup: {near['near_dup_removed']} docs in {near['near_dup_clusters']} clusters removed "
        f"({time.time() - t:.1f} s)")
    stats["documents_out"] = len(docs)
    stats["bytes_out"] = _nbytes(docs)
    removed = stats["exact_dups_removed"] + stats["near_dup_removed"]
    stats["dedup_rate"] = round(removed / max(1, stats["documents_into_dedup"]), 4)
    return docs, stats


def is_complete(root: Path, name: str) -> bool:
    marker = root / name / MARKER
    if not marker.exists():
        return False
    try:
        return json.loads(marker.read_text()).get("params") == build_params(name)
    except json.JSONDecodeError:
        return False


def build_distribution(root: Path, name: str, log: Callable[[str], None] = print) -> dict:
    """Build one distribution unless a complete matching build exists; returns its manifest entry."""
    check_name(name, DISTRIBUTIONS)
    root = Path(root)
    if is_complete(root, name):
        log(f"[{name}] complete, reused")
        return json.loads((root / name / "manifest.json").read_text())
    t0 = time.time()
    dist = DISTRIBUTIONS[name]
    cache = root / ".cache"
    docs, sources = [], []
    for src in dist.sources:
        t = time.time()
        got, version = load_source(cache, src)
        nb = _nbytes(got)
        log(f"[{name}] {src.package} {version}: {len(got)} docs, {nb / 1e6:.1f} MB ({time.time() - t:.1f} s)")
        sources.append({"package": src.package.split("==")[0], "version": version, "kind": src.kind,
                        "licence": src.licence, "extracted": src.how, "documents": len(got), "bytes": nb})
        docs += got
    docs, stats = clean_docs(name, docs, lambda m: log(f"[{name}] {m}"))
    train, val = split_docs(docs)
    blobs = {"train": encode_split(train), "val": encode_split(val)}
    ensure_free(root, 2 * sum(map(len, blobs.values())) + 50_000_000, f"writing corpus {name}")
    entry = {"sources": sources, "dedup": stats, "params": build_params(name),
             "splits": {s: split_stats(blobs[s]) for s in SPLITS}, "note": dist.note}
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for s in SPLITS:
        atomic_write_bytes(tmp / f"{s}.bin", blobs[s])
    entry["build_seconds"] = round(time.time() - t0, 1)
    atomic_write_json(tmp / "manifest.json", entry)
    final = root / name
    if final.exists():
        old = root / f".old-{name}-{os.getpid()}"
        os.replace(final, old)
        shutil.rmtree(old)
    os.replace(tmp, final)
    atomic_write_json(final / MARKER, {"params": build_params(name)})
    log(f"[{name}] train {len(blobs['train']) / 1e6:.1f} MB ({len(train)} docs), "
        f"val {len(blobs['val']) / 1e6:.2f} MB ({len(val)} docs), {entry['build_seconds']} s")
    return entry


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale(root: Path) -> None:
    """Delete temporary folders left by killed builds (their pid is gone)."""
    for pattern in (".tmp-*", ".old-*", ".cache/*/.part-*"):
        for p in root.glob(pattern):
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)


def tool_versions() -> dict:
    import numpy
    out = {"python": platform.python_version(), "numpy": numpy.__version__}
    for tool, args in (("groff", ["groff", "--version"]), ("dpkg", ["dpkg-deb", "--version"]),
                       ("apt", ["apt-get", "--version"])):
        try:
            out[tool] = subprocess.run(args, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            out[tool] = None
    return out


def write_manifest(root: Path, entries: dict[str, dict], extra: dict | None = None) -> dict:
    man = {"schema_version": SCHEMA_VERSION,
           "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "tools": tool_versions(), "format": "byte tokens (vocab 256); each document followed by one NUL",
           "distributions": entries, **(extra or {})}
    atomic_write_json(Path(root) / "manifest.json", man)
    return man


def build(root: Path, names: list[str] | None = None, log: Callable[[str], None] = print) -> dict:
    """Build the named distributions (all by default) and refresh the top-level manifest."""
    root = Path(root)
    names = names or list(DISTRIBUTIONS)
    for n in names:
        check_name(n, DISTRIBUTIONS)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale(root)
    man = None
    for n in names:
        build_distribution(root, n, log)
        # After each distribution, so an interrupted build leaves a manifest
        # that matches the splits on disk.
        man = write_manifest(root, {d: json.loads((root / d / "manifest.json").read_text())
                                    for d in DISTRIBUTIONS if is_complete(root, d)})
    for line in differences_from_reference(man, names):
        log(line)
    return man


def differences_from_reference(man: dict, names: list[str]) -> list[str]:
    """One line per distribution whose splits differ from the reference build
    the shipped grids were trained on (a Debian point release changes a
    package): runs on such a build cannot resume or join those grids."""
    from trainer.corpora.store import reference_manifest

    ref = reference_manifest()["distributions"]
    out = []
    for n in names:
        if n not in ref or n not in man["distributions"]:
            continue
        mine, theirs = man["distributions"][n], ref[n]
        if all(mine["splits"][s]["sha256"] == theirs["splits"][s]["sha256"] for s in SPLITS):
            continue
        was = {x["package"]: x["version"] for x in theirs["sources"]}
        changed = [f"{x['package']} {was.get(x['package'], '?')} -> {x['version']}" for x in mine["sources"]
                   if was.get(x["package"]) != x["version"]]
        out.append(f"warning: {n} differs from the reference build of trainer/corpora/reference_manifest.json"
                   f" ({'; '.join(changed) or 'same package versions, different content'}); grids trained on "
                   f"the reference build will refuse to resume on it")
    return out


def sample(root: Path, out: Path, train_bytes: int = 150_000, val_bytes: int = 40_000,
           names: list[str] | None = None) -> dict:
    """A small corpus root cut from a built one: whole documents from the
    start of each split (documents larger than a third of the budget are
    skipped), same format, manifest naming what it was cut from."""
    root, out = Path(root), Path(out)
    full = json.loads((root / "manifest.json").read_text())
    names = names or sorted(full["distributions"])
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    entries = {}
    for n in names:
        check_name(n, full["distributions"])
        (tmp / n).mkdir(parents=True)
        src = full["distributions"][n]
        entry = {k: src[k] for k in ("sources", "params", "note")}
        entry["splits"] = {}
        for s, budget in (("train", train_bytes), ("val", val_bytes)):
            kept, size = [], 0
            for doc in documents(open_split(root, n, s)):
                if len(doc) + 1 <= budget / 3 and size + len(doc) + 1 <= budget:
                    kept.append(doc)
                    size += len(doc) + 1
            blob = b"".join(d + DOC_END for d in kept)
            atomic_write_bytes(tmp / n / f"{s}.bin", blob)
            entry["splits"][s] = split_stats(blob)
        entry["sample_of"] = {s: src["splits"][s]["sha256"] for s in SPLITS}
        entry["dedup"] = src["dedup"]
        entries[n] = entry
    man = {"schema_version": SCHEMA_VERSION, "built_at": full["built_at"], "tools": full["tools"],
           "format": full["format"], "distributions": entries,
           "sample": {"train_bytes": train_bytes, "val_bytes": val_bytes,
                      "how": "whole documents from the start of each split of the full build"}}
    atomic_write_json(tmp / "manifest.json", man)
    atomic_write_bytes(tmp / "README.md", _sample_readme(man).encode())
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return man


def _sample_readme(man: dict) -> str:
    lines = ["# Corpus sample", "",
             "A small corpus root in the same format as a full build (`manifest.json`,",
             "`<name>/train.bin`, `<name>/val.bin`; bytes, each document followed by NUL),",
             "cut from a full build by `transfer-train corpora sample OUT` (whole documents",
             "from the start of each split). Regenerate it with:", "",
             "    transfer-train corpora build && transfer-train corpora sample tests/data/corpus_sample", "",
             "Sources and licences (see trainer/corpora/LICENSES.md):", "",
             "| distribution | package | version | licence |", "|---|---|---|---|"]
    for n, d in sorted(man["distributions"].items()):
        for s in d["sources"]:
            lines.append(f"| {n} | {s['package']} | {s['version']} | {s['licence']} |")
    return "\n".join(lines) + "\n"


def list_rows(root: Path) -> list[dict]:
    from trainer.corpora.store import manifest
    man = manifest(root)
    rows = []
    for n, d in sorted(man["distributions"].items()):
        rows.append({"name": n, "train_bytes": d["splits"]["train"]["bytes"],
                     "val_bytes": d["splits"]["val"]["bytes"],
                     "train_docs": d["splits"]["train"]["documents"],
                     "val_docs": d["splits"]["val"]["documents"],
                     "sha256": d["splits"]["train"]["sha256"][:12],
                     "dedup_rate": d.get("dedup", {}).get("dedup_rate")})
    return rows

