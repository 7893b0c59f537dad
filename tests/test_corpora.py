"""Corpora: cleaning, dedup, splitting, determinism, storage and packing."""
import hashlib
import json
import os
import random
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest

import trainer.corpora as corpora
from trainer.corpora import build, clean, sources, store
from trainer.corpora.clean import Doc

SAMPLE = Path(__file__).parent / "data" / "corpus_sample"
NAMES = ["c", "english", "german", "go", "maths", "python"]


def _words(rng, n, vocab):
    return " ".join(rng.choice(vocab) for _ in range(n))


@pytest.fixture(scope="module")
def vocab():
    rng = random.Random(1)
    return ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 9))) for _ in range(4000)]


def _edit(text, rng, n_edits):
    w = text.split()
    for _ in range(n_edits):
        w[rng.randrange(len(w))] = "EDITED"
    return " ".join(w)


# ---------------------------------------------------------------- cleaning

def test_normalise_removes_nul_trailing_space_and_blank_runs():
    out = clean.normalise("a\x00b  \r\n\n\n\n\nc\t\n\n")
    assert out == "ab\n\n\nc\n"
    assert "\x00" not in out


def test_exact_dedup_ignores_whitespace_and_keeps_first_by_key():
    docs = [Doc("s", "b", "b", "hello   world\n"), Doc("s", "a", "a", "hello world"),
            Doc("s", "c", "c", "something else")]
    kept, removed = clean.dedup_exact(docs)
    assert removed == 1
    assert [d.key for d in kept] == ["a", "c"]


def test_minhash_estimates_jaccard(vocab):
    # Two texts of distinct 5-word shingles sharing a known fraction of them:
    # the share of equal signature entries estimates the Jaccard index.
    words = [f"w{i}" for i in range(3000)]
    base = words[:2000]
    other = words[:1500] + words[2000:2500]
    sig = clean.minhash([" ".join(base).encode(), " ".join(other).encode()])
    sh = lambda w: {tuple(w[i:i + 5]) for i in range(len(w) - 4)}  # noqa: E731
    a, b = sh(base), sh(other)
    true_j = len(a & b) / len(a | b)
    est = (sig[0] == sig[1]).mean()
    assert abs(est - true_j) < 3 * np.sqrt(true_j * (1 - true_j) / clean.NUM_PERM) + 0.02
    assert sig.dtype == np.uint32 and sig.shape == (2, clean.NUM_PERM)


def test_near_dedup_clusters_edited_copies_not_unrelated(vocab):
    rng = random.Random(3)
    bases = [_words(rng, 400, vocab) for _ in range(30)]
    docs = [Doc("s", f"base{i:02d}", f"g{i}", t) for i, t in enumerate(bases)]
    # Three copies of base 0 with 3 edited words each, and one of base 5.
    docs += [Doc("s", f"copy0-{k}", f"h{k}", _edit(bases[0], rng, 3)) for k in range(3)]
    docs.append(Doc("s", "copy5", "h5", _edit(bases[5], rng, 3)))
    kept, st = clean.dedup_near(docs)
    assert st == {"near_dup_clusters": 2, "near_dup_removed": 4}
    assert sorted(d.key for d in kept) == sorted(f"base{i:02d}" for i in range(30))


def test_near_dedup_leaves_moderately_similar_docs(vocab):
    rng = random.Random(4)
    a = _words(rng, 400, vocab)
    # Half the text replaced: Jaccard far below 0.8.
    b = " ".join(a.split()[:200]) + " " + _words(rng, 200, vocab)
    kept, st = clean.dedup_near([Doc("s", "a", "a", a), Doc("s", "b", "b", b)])
    assert len(kept) == 2 and st["near_dup_removed"] == 0


def test_short_documents_still_get_signatures():
    sig = clean.minhash([b"one two", b"one two", b"three"])
    assert (sig[0] == sig[1]).all() and not (sig[0] == sig[2]).all()


def test_boilerplate_lines_removed_only_when_frequent():
    nav = "Prev  Up  Home  Next: the navigation bar"
    rare = "a line that appears in a few pages only"
    docs = [Doc("pkg", f"d{i}", f"d{i}",
                clean.normalise(f"{nav}\nbody text number {i} here\n" + (rare if i < 5 else "")))
            for i in range(25)]
    docs.append(Doc("other", "x", "x", f"{nav}\nanother source\n"))
    out, removed = clean.remove_boilerplate(docs)
    assert all(nav not in d.text for d in out if d.source == "pkg")
    assert nav in out[-1].text  # counted per source: once in "other"
    assert sum(rare in d.text for d in out) == 5
    assert removed == 25 * (len(nav) + 1)


def test_boilerplate_for_code_removes_comments_not_statements():
    lic = "# Licensed under the Apache License, Version 2.0"
    c_lic = " * This program is free software; you can redistribute it"
    code = ["        return super().forward(x)", "#include <linux/module.h>", "\t*ppos += count;"]
    body = "\n".join(code)
    docs = [Doc("pkg", f"f{i}", "dir", f"{lic}\n{c_lic}\ndef f{i}(x):\n{body}\n") for i in range(30)]
    out, _ = clean.remove_boilerplate(docs, comments_only=True)
    for d in out:
        assert lic not in d.text and c_lic not in d.text
        assert all(line in d.text for line in code)


def test_code_fraction_separates_prose_from_code():
    prose = "This section explains how the scheduler\nchooses the next task to run.\n"
    code = "int main(void) {\n\tint x = 1;\n\treturn x;\n}\n"
    assert clean.code_fraction(prose) == 0.0
    assert clean.code_fraction(code) > 0.7


def test_metamath_proofs_stripped_and_sections_cut():
    db = ("$c ( ) $.\n$(\n#*#*#*\n  Part one\n#*#*#*\n$)\nax1 $a |- ph $.\n"
          "th1 $p |- ph $= ( wph ax1 ) ABC $.\n$(\n=-=-=-\n  Part two\n=-=-=-\n$)\nth2 $p |- ps $= ( x ) Z $.\n")
    secs = sources.metamath_sections(db)
    assert len(secs) == 3
    assert "$=" not in "".join(secs)
    assert "th1 $p |- ph $." in secs[1] and secs[2].startswith("$(\n=-=-=-")


def test_html_to_text_drops_markup_and_scripts():
    text = sources.html_to_text("<html><head><title>T</title><script>var x;</script></head>"
                                "<body><h1>Title</h1><p>Some &amp; text</p><pre>  code\n  more</pre></body></html>")
    assert "var x" not in text and "Some & text" in text and "  code\n  more" in text and "<" not in text


# ---------------------------------------------------------------- splitting

def _synthetic_docs(vocab, n_groups=40, per_group=3, seed=5):
    rng = random.Random(seed)
    return [Doc("pkg", f"pkg/g{g:02d}/f{k}.py", f"pkg/g{g:02d}", _words(rng, 300, vocab))
            for g in range(n_groups) for k in range(per_group)]


def test_split_keeps_groups_whole_and_val_near_target(vocab):
    docs = _synthetic_docs(vocab, n_groups=80, per_group=2)
    train, val = build.split_docs(docs, val_bytes=20_000)
    assert {d.group for d in train}.isdisjoint({d.group for d in val})
    assert {d.key for d in train}.isdisjoint({d.key for d in val})
    assert len(train) + len(val) == len(docs)
    val_bytes = sum(len(d.text.encode()) for d in val)
    group_max = max(sum(len(d.text.encode()) for d in docs if d.group == g) for g in {d.group for d in docs})
    assert 20_000 <= val_bytes < 20_000 + group_max


def test_pipeline_is_deterministic_and_order_independent(vocab):
    docs = _synthetic_docs(vocab)
    docs.append(Doc("pkg", "pkg/dup.py", "pkg/dup", docs[0].text))

    def run(ds):
        kept, _ = build.clean_docs("python", ds, log=lambda m: None)
        tr, va = build.split_docs(kept, val_bytes=20_000)
        return hashlib.sha256(build.encode_split(tr)).hexdigest(), hashlib.sha256(build.encode_split(va)).hexdigest()

    first = run(list(docs))
    assert run(list(reversed(docs))) == first
    rng = random.Random(0)
    shuffled = list(docs)
    rng.shuffle(shuffled)
    assert run(shuffled) == first


# ---------------------------------------------------------------- building (synthetic source)

@pytest.fixture
def fake_dist(monkeypatch, vocab):
    """A distribution named "python" whose only source yields synthetic documents."""
    calls = []

    def fake_load(cache, src):
        calls.append(src.package)
        return _synthetic_docs(vocab, n_groups=60, seed=6), "1.0"

    dist = sources.Distribution(sources=(sources.Source("fakepkg", "deb", "MIT", "synthetic", None),), code=True)
    monkeypatch.setitem(sources.DISTRIBUTIONS, "python", dist)
    monkeypatch.setattr(build, "load_source", fake_load)
    monkeypatch.setattr(build, "VAL_BYTES", 30_000)
    return calls


def test_build_writes_contract_and_is_idempotent(tmp_path, fake_dist):
    man = build.build(tmp_path, ["python"], log=lambda m: None)
    d = man["distributions"]["python"]
    train = corpora.open_split(tmp_path, "python", "train")
    assert train.dtype == np.uint8 and train.ndim == 1
    assert d["splits"]["train"]["sha256"] == hashlib.sha256(bytes(train)).hexdigest()
    assert d["splits"]["train"]["documents"] == len(corpora.documents(train))
    assert d["sources"][0]["package"] == "fakepkg" and d["sources"][0]["version"] == "1.0"
    assert man["schema_version"] == build.SCHEMA_VERSION
    mtime = (tmp_path / "python" / "train.bin").stat().st_mtime_ns
    logs = []
    build.build(tmp_path, ["python"], log=logs.append)
    assert fake_dist == ["fakepkg"]  # second build fetched nothing
    assert any("reused" in m for m in logs)
    assert (tmp_path / "python" / "train.bin").stat().st_mtime_ns == mtime


def test_interrupted_build_is_not_trusted(tmp_path, fake_dist):
    build.build(tmp_path, ["python"], log=lambda m: None)
    first = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "python" / build.MARKER).unlink()  # as if killed before the marker
    (tmp_path / "python" / "train.bin").write_bytes(b"half")
    build.build(tmp_path, ["python"], log=lambda m: None)
    assert fake_dist == ["fakepkg", "fakepkg"]
    again = json.loads((tmp_path / "manifest.json").read_text())
    assert again["distributions"]["python"]["splits"] == first["distributions"]["python"]["splits"]


def test_builds_in_two_roots_give_same_hashes(tmp_path, fake_dist):
    a = build.build(tmp_path / "a", ["python"], log=lambda m: None)
    b = build.build(tmp_path / "b", ["python"], log=lambda m: None)
    assert a["distributions"]["python"]["splits"] == b["distributions"]["python"]["splits"]


# ---------------------------------------------------------------- the committed sample

def test_sample_has_every_distribution_in_contract_form():
    man = corpora.manifest(SAMPLE)
    assert sorted(man["distributions"]) == NAMES
    total = sum(f.stat().st_size for f in SAMPLE.rglob("*") if f.is_file())
    assert total <= 2 * 1024 * 1024
    for name in NAMES:
        entry = man["distributions"][name]
        assert entry["sources"] and all(s["licence"] and s["version"] for s in entry["sources"])
        docs = {}
        for split in store.SPLITS:
            data = corpora.open_split(SAMPLE, name, split)
            raw = bytes(data)
            assert entry["splits"][split]["sha256"] == hashlib.sha256(raw).hexdigest()
            assert raw.endswith(b"\x00") and len(raw) > 10_000
            raw.decode("utf-8")
            docs[split] = set(corpora.documents(data))
        assert docs["train"].isdisjoint(docs["val"])


# ---------------------------------------------------------------- packing

def test_pack_round_trip_equals_directory(tmp_path):
    out = tmp_path / "c.tar"
    store.pack(SAMPLE, out, max_mb=5, only=["python", "maths"], log=lambda m: None)
    assert tarfile.is_tarfile(out)
    packed_man = corpora.manifest(out)
    assert sorted(packed_man["distributions"]) == ["maths", "python"]
    for name in ("python", "maths"):
        for split in store.SPLITS:
            a = corpora.open_split(SAMPLE, name, split)
            b = corpora.open_split(out, name, split)
            assert b.dtype == np.uint8 and np.array_equal(a, b)
            assert packed_man["distributions"][name]["splits"][split]["sha256"] == hashlib.sha256(bytes(b)).hexdigest()
    with pytest.raises(ValueError, match="unknown corpus 'english'; known: maths, python"):
        corpora.open_split(out, "english", "train")


def test_pack_over_budget_fails_or_truncates_at_doc_boundaries(tmp_path):
    out = tmp_path / "small.tar"
    with pytest.raises(store.CorpusError, match="--max-mb"):
        store.pack(SAMPLE, out, max_mb=0.25, log=lambda m: None)
    assert not out.exists()
    man = store.pack(SAMPLE, out, max_mb=0.25, truncate=True, log=lambda m: None)
    assert out.stat().st_size <= 0.25 * 2**20
    for name in NAMES:
        t = man["distributions"][name]["truncated"]
        assert t["train_bytes_kept"] < t["train_bytes_full"]
        full = bytes(corpora.open_split(SAMPLE, name, "train"))
        cut = bytes(corpora.open_split(out, name, "train"))
        assert full.startswith(cut) and cut.endswith(b"\x00")
        assert np.array_equal(corpora.open_split(out, name, "val"), corpora.open_split(SAMPLE, name, "val"))


# ---------------------------------------------------------------- errors

def test_unknown_names_are_clear():
    with pytest.raises(ValueError, match=r"unknown corpus 'klingon'; known: c, english, german, go, maths, python"):
        corpora.open_split(SAMPLE, "klingon", "train")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        corpora.open_split(SAMPLE, "python", "test")
    with pytest.raises(ValueError, match="unknown corpus 'klingon'"):
        build.build(SAMPLE, ["klingon"], log=lambda m: None)


def test_missing_root_and_default_root(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="does not exist"):
        corpora.manifest(tmp_path / "nowhere")
    monkeypatch.setenv("TRANSFER_CORPORA", str(tmp_path))
    assert corpora.default_root() == tmp_path
    monkeypatch.delenv("TRANSFER_CORPORA")
    assert corpora.default_root().name == "corpora"


def test_disk_full_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(sources.shutil, "disk_usage", lambda p: type("Usage", (), {"free": 10_000_000}))
    with pytest.raises(store.CorpusError, match=r"disk full: downloading foo needs 500 MB free .* only 10 MB left"):
        sources.fetch_deb(tmp_path, "foo")


def _fake_apt(tmp_path, monkeypatch, script):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt = bin_dir / "apt-get"
    apt.write_text("#!/bin/sh\n" + script)
    apt.chmod(apt.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_missing_package_is_named(tmp_path, monkeypatch):
    _fake_apt(tmp_path, monkeypatch, 'echo "E: Unable to locate package $2" >&2; exit 100\n')
    with pytest.raises(store.CorpusError, match="package no-such-pkg is not available from apt"):
        sources.fetch_deb(tmp_path / "cache", "no-such-pkg")


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch):
    # A download killed half way: a partial .deb and a signal exit status.
    _fake_apt(tmp_path, monkeypatch, 'printf "!<arch>\\npartial" > "$2_1.0_all.deb"; kill -TERM $$\n')
    with pytest.raises(store.CorpusError, match="download of package somepkg .*interrupted"):
        sources.fetch_deb(tmp_path / "cache", "somepkg")
    assert list((tmp_path / "cache" / "debs").iterdir()) == []


def test_build_removes_leftovers_of_killed_builds_only(tmp_path, fake_dist):
    dead, live = tmp_path / ".tmp-python-999999999", tmp_path / f".tmp-go-{os.getpid()}"
    part = tmp_path / ".cache" / "debs" / ".part-foo-999999999"
    for d in (dead, live, part):
        d.mkdir(parents=True)
    build.build(tmp_path, ["python"], log=lambda m: None)
    assert not dead.exists() and not part.exists() and live.exists()


def test_cli_list_and_one_line_errors(tmp_path):
    from typer.testing import CliRunner

    from trainer.corpora.cli import app
    runner = CliRunner()
    res = runner.invoke(app, ["list", "--root", str(SAMPLE)])
    assert res.exit_code == 0
    for name in NAMES:
        assert name in res.output
    assert corpora.manifest(SAMPLE)["distributions"]["python"]["splits"]["train"]["sha256"][:8] in res.output
    res = runner.invoke(app, ["build", "--only", "python,klingon", "--root", str(tmp_path)])
    assert res.exit_code == 1
    assert "error: unknown corpus 'klingon'; known: c, english, german, go, maths, python" in res.output
    res = runner.invoke(app, ["pack", str(tmp_path / "x.tar"), "--max-mb", "0.1", "--root", str(SAMPLE)])
    assert res.exit_code == 1 and "--truncate" in res.output
