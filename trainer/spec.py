"""Grid specs (TOML): the schema, its validation, and the expansion into
pre-training jobs and cells.

A spec's [grid] names model sizes, targets, pre-training sources, fine-tuning
sizes D_F (`data_tokens`), pre-training amounts p and seeds; every
combination is a cell (one run). Scratch cells have source "none" and p = 0.
Cells that are no product (the runs `bayes-transfer next-runs` chooses) are
listed one by one as [[run]] tables (size, target, source, data_tokens,
pretrain_tokens, seed, pretrain_seed); a spec may have both. One pre-training
run per (size, source, pre-training seed) saves a checkpoint at every p of the
spec and at [pretrain].checkpoints; those belong to its identity, so listing a
grid's checkpoints lets another spec reuse that grid's pre-training. Every
value is checked against the schema below before any work starts, and every
problem is one line naming the key.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.data import DISTRIBUTIONS, source_mix
from trainer.model import SIZES, config_for
from trainer.train import LR_TABLE, Settings, batch_for, eval_interval_for

CTX = 256
SCRATCH = "none"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SpecError(ValueError):
    """A problem with a grid spec, named in one line."""


def spec_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


# --- the schema: key -> (kind, low, high); kind "int" is a whole number ---
_INT, _FLOAT, _STR = "int", "float", "str"
_SCHEMA: dict[str, dict[str, tuple]] = {
    "spec": {"name": (_STR,), "description": (_STR,), "grid": ("table",), "run": ("tables",),
             "pretrain": ("table",), "train": ("table",)},
    "grid": {"sizes": ("list", _STR), "targets": ("list", _STR), "sources": ("list", _STR),
             "data_tokens": ("list", _INT, CTX + 1, 2**40), "scratch_data_tokens": ("list", _INT, CTX + 1, 2**40),
             "pretrain_tokens": ("list", _INT, 0, 2**44), "seeds": ("list", _INT, 0, 2**31),
             "multi_seed_max_data_tokens": (_INT, 1, 2**40), "data_tokens_max_by_size": ("map", _INT, 1, 2**40)},
    "pretrain": {"tokens": (_INT, 1, 2**44), "eval_interval": (_INT, 1, 10**6), "eval_seqs": (_INT, 1, 8192),
                 "seed": (_INT, 0, 2**31), "seeds": ("list", _INT, 0, 2**31), "seed_sizes": ("list", _STR),
                 "checkpoints": ("list", _INT, 1, 2**44)},
    "run": {"size": (_STR,), "target": (_STR,), "source": (_STR,), "data_tokens": (_INT, CTX + 1, 2**40),
            "pretrain_tokens": (_INT, 0, 2**44), "seed": (_INT, 0, 2**31), "pretrain_seed": (_INT, 0, 2**31)},
    "train": {"patience": (_INT, 1, 1000), "smooth": (_FLOAT, 0.01, 1.0), "eval_seqs": (_INT, 1, 8192),
              "report_seqs": (_INT, 1, 65536), "max_steps": (_INT, 1, 10**8), "budget": (_FLOAT, 1.0, 1000.0),
              "warmup": (_INT, 1, 10**6), "pack": (_INT, 1, 1024), "lr": ("map", _FLOAT, 1e-7, 1.0),
              "batch": (_INT, 1, 8192), "eval_interval": (_INT, 1, 10**6)},
}


def _check_scalar(v, kind: str, lo, hi, where: str):
    if kind == _STR:
        if not isinstance(v, str):
            raise SpecError(f"{where}: {v!r} is not a string")
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SpecError(f"{where}: {v!r} is not a number")
    if kind == _INT:
        if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
            raise SpecError(f"{where}: {v!r} is not a whole number")
        v = int(v)
    elif not math.isfinite(v):
        raise SpecError(f"{where}: {v!r} is not a finite number")
    if lo is not None and not (lo <= v <= hi):
        fmt = (lambda x: str(int(x))) if kind == _INT else (lambda x: f"{x:g}")
        raise SpecError(f"{where}: {fmt(v)} is out of range [{fmt(lo)}, {fmt(hi)}]")
    return float(v) if kind == _FLOAT else v


def _check_table(d, section: str, where: str | None = None) -> dict:
    where = where or ("spec" if section == "spec" else f"[{section}]")
    if not isinstance(d, dict):
        raise SpecError(f"{where} must be a table")
    schema = _SCHEMA[section]
    for k in d:
        if k not in schema:
            near = difflib.get_close_matches(k, schema, n=1)
            hint = f" (did you mean `{near[0]}`?)" if near else f"; allowed: {', '.join(sorted(schema))}"
            raise SpecError(f"{where}: unknown key `{k}`{hint}")
    out = {}
    for k, v in d.items():
        kind, *rest = schema[k]
        # ("list" | "map", item kind, [lo, hi]) or (scalar kind, [lo, hi])
        item = rest.pop(0) if kind in ("list", "map") else kind
        lo, hi = rest if rest else (None, None)
        if kind == "table":
            out[k] = v
        elif kind == "tables":
            if not isinstance(v, list) or not v or not all(isinstance(x, dict) for x in v):
                raise SpecError(f"{where}.{k} must be a list of tables ([[{k}]])")
            out[k] = v
        elif kind == "list":
            if not isinstance(v, list) or not v:
                raise SpecError(f"{where}.{k} must be a non-empty list")
            out[k] = [_check_scalar(x, item, lo, hi, f"{where}.{k}") for x in v]
            dup = sorted({x for x in out[k] if out[k].count(x) > 1}, key=str)
            if dup:
                raise SpecError(f"{where}.{k} repeats {dup}: duplicate cells")
        elif kind == "map":
            if not isinstance(v, dict):
                raise SpecError(f"{where}.{k} must be a table of size -> value")
            for s in v:
                if s not in SIZES:
                    raise SpecError(f"{where}.{k}: unknown model size {s!r}; known: {', '.join(SIZES)}")
            out[k] = {s: _check_scalar(x, item, lo, hi, f"{where}.{k}.{s}") for s, x in v.items()}
        else:
            out[k] = _check_scalar(v, kind, lo, hi, f"{where}.{k}")
    return out


@dataclass(frozen=True)
class PretrainJob:
    size: str
    source: str
    tokens: int
    checkpoints: tuple[int, ...]
    seed: int
    settings: Settings

    @property
    def job_id(self) -> str:
        seed = f".s{self.seed}" if self.seed else ""
        return (f"pre.{self.source}.{self.size}.t{self.tokens}{seed}-"
                f"{spec_hash([self.checkpoints, self.settings.to_dict(), self.seed])}")


@dataclass(frozen=True)
class Cell:
    size: str
    target: str
    source: str  # SCRATCH for scratch
    pretrain_tokens: int  # 0 for scratch
    data_tokens: int
    seed: int
    settings: Settings
    pretrain_job: str | None
    pretrain_seed: int = -1  # -1 for scratch

    @property
    def run_id(self) -> str:
        ps = f".ps{self.pretrain_seed}" if self.pretrain_seed > 0 else ""
        return (f"{self.target}.{self.source}.{self.size}.p{self.pretrain_tokens}{ps}.d{self.data_tokens}.s{self.seed}"
                f"-{spec_hash([self.settings.to_dict(), self.pretrain_job])}")

    def coords(self) -> dict:
        cfg = config_for(self.size)
        return dict(target=self.target, source=self.source, size=self.size, n_layer=cfg.n_layer,
                    d_model=cfg.d_model, pretrain_tokens=self.pretrain_tokens, data_tokens=self.data_tokens,
                    seed=self.seed, pretrain_seed=self.pretrain_seed, pretrain_run=self.pretrain_job or "")


@dataclass
class Spec:
    name: str
    text: str
    train: dict
    pretrain: dict
    pretrain_jobs: list[PretrainJob] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)

    # sizes, targets and sources in the order the cells name them
    @property
    def sizes(self) -> list[str]:
        return list(dict.fromkeys(c.size for c in self.cells))

    @property
    def targets(self) -> list[str]:
        return list(dict.fromkeys(c.target for c in self.cells))

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(c.source for c in self.cells))

    def corpora_needed(self) -> set[str]:
        need = set(self.targets)
        for s in set(self.sources) - {SCRATCH}:
            need |= set(source_mix(s))
        return need


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    if not path.exists():
        raise SpecError(f"spec {path} does not exist")
    if not path.is_file():
        raise SpecError(f"spec {path} is not a file")
    try:
        text = path.read_text()
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"spec {path} is not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"spec {path} cannot be read: {e}") from None
    return parse_spec(raw, text, default_name=path.stem)


def _check_names(where: str, sizes=(), targets=(), sources=()) -> None:
    for s in sizes:
        if s not in SIZES:
            raise SpecError(f"{where}: unknown model size {s!r}; known: {', '.join(SIZES)}")
    for t in targets:
        if t not in DISTRIBUTIONS:
            raise SpecError(f"{where}: unknown corpus {t!r}; known: {', '.join(DISTRIBUTIONS)}")
    for s in sources:
        if s != SCRATCH:
            try:
                source_mix(s)
            except ValueError as e:
                raise SpecError(f"{where}: {e}") from None


def _check_runs(raw_runs: list, pre_seeds: list[int]) -> list[dict]:
    """The explicit cells of [[run]]: one table per run; scratch runs have source "none"."""
    runs, seen = [], set()
    for i, r in enumerate(raw_runs, 1):
        where = f"[[run]] {i}"
        r = _check_table(r, "run", where)
        for k in ("size", "target", "source", "data_tokens"):
            if k not in r:
                raise SpecError(f"{where}: missing `{k}`")
        _check_names(where, [r["size"]], [r["target"]], [r["source"]])
        scratch = r["source"] == SCRATCH
        p = r.get("pretrain_tokens", 0)
        if scratch and p:
            raise SpecError(f"{where}: a scratch run (source \"none\") has pretrain_tokens = 0")
        if not scratch and not p:
            raise SpecError(f"{where}: a fine-tuned run needs a positive `pretrain_tokens`")
        ps = r.get("pretrain_seed", pre_seeds[0])
        if scratch and "pretrain_seed" in r:
            raise SpecError(f"{where}: a scratch run has no pretrain_seed")
        if not scratch and ps not in pre_seeds:
            raise SpecError(f"{where}: pretrain_seed {ps} is not in [pretrain].seeds {pre_seeds}")
        run = dict(size=r["size"], target=r["target"], source=r["source"], data_tokens=r["data_tokens"],
                   pretrain_tokens=p, seed=r.get("seed", 0), pretrain_seed=-1 if scratch else ps)
        key = tuple(run.values())
        if key in seen:
            raise SpecError(f"{where} repeats an earlier run: duplicate cells")
        seen.add(key)
        runs.append(run)
    return runs


def parse_spec(raw: dict, text: str = "", default_name: str = "grid") -> Spec:
    """A spec's cells are a factorial [grid], an explicit list of [[run]] tables, or both."""
    top = _check_table(raw, "spec")
    if "grid" not in top and "run" not in top:
        raise SpecError("spec: missing [grid] table (or [[run]] tables)")
    g = _check_table(top["grid"], "grid") if "grid" in top else None
    pre = _check_table(top.get("pretrain", {}), "pretrain")
    tr = _check_table(top.get("train", {}), "train")
    name = top.get("name", default_name)
    if not NAME_RE.match(name):
        raise SpecError(f"spec name {name!r} must be 1-64 letters, digits, '_', '.' or '-' (it names files)")
    p_pos: set[int] = set()
    if g is not None:
        for k in ("sizes", "targets", "sources", "data_tokens", "seeds"):
            if k not in g:
                raise SpecError(f"[grid]: missing `{k}`")
        _check_names("[grid].sizes", sizes=g["sizes"])
        _check_names("[grid].targets", targets=g["targets"])
        _check_names("[grid].sources", sources=g["sources"])
        ft_sources = [s for s in g["sources"] if s != SCRATCH]
        if ft_sources and "pretrain_tokens" not in g:
            raise SpecError("[grid]: missing `pretrain_tokens` (needed by the pre-training sources)")
        grid_p = {p for p in g.get("pretrain_tokens", []) if p > 0}
        if ft_sources and not grid_p:
            raise SpecError("[grid].sources names a pre-training source but pretrain_tokens has no positive value")
        if ft_sources:
            p_pos |= grid_p
        for s in g.get("data_tokens_max_by_size", {}):
            if s not in g["sizes"]:
                raise SpecError(f"[grid].data_tokens_max_by_size: size {s!r} is not in [grid].sizes")
        for s in pre.get("seed_sizes", []):
            if s not in g["sizes"]:
                raise SpecError(f"[pretrain].seed_sizes: size {s!r} is not in [grid].sizes")
    pre_seeds = pre.get("seeds", [pre.get("seed", 0)])
    runs = _check_runs(top["run"], pre_seeds) if "run" in top else []
    p_pos |= {r["pretrain_tokens"] for r in runs if r["pretrain_tokens"] > 0}
    budget = pre.get("tokens", max(p_pos) if p_pos else 0)
    if p_pos and budget < max(p_pos):
        raise SpecError(f"[pretrain].tokens ({budget}) must be at least the largest pretrain_tokens ({max(p_pos)})")
    extra = [c for c in pre.get("checkpoints", []) if c > budget]
    if extra:
        raise SpecError(f"[pretrain].checkpoints: {extra[0]} is beyond [pretrain].tokens ({budget})")
    sizes = g["sizes"] if g is not None else []
    spec = Spec(name=name, text=text, train=tr,
                pretrain=dict(tokens=int(budget), eval_interval=pre.get("eval_interval", 250),
                              eval_seqs=pre.get("eval_seqs", 256), seeds=pre_seeds,
                              seed_sizes=pre.get("seed_sizes", sizes if "seeds" in pre else []),
                              checkpoints=sorted(p_pos | set(pre.get("checkpoints", [])) | {int(budget)})))
    _expand(spec, g, runs)
    return spec


def expected_tokens(data_tokens: int, scratch: bool) -> float:
    """Tokens to early stopping, measured on this project's CPU grids: about
    1M x (D_F / 8 KiB)^0.6 from scratch, 0.6x that fine-tuned."""
    t = 1e6 * (data_tokens / 8192) ** 0.6
    return t if scratch else 0.6 * t


def cell_settings(train: dict, size: str, data_tokens: int) -> Settings:
    """A cell's settings; the token budget is `budget` times the expected
    tokens to early stopping from scratch, so no run of a grid's low-data
    regime is capped (an explicit max_steps overrides it)."""
    batch = train.get("batch", batch_for(data_tokens))
    expected_steps = expected_tokens(data_tokens, True) / (batch * CTX)
    max_steps = train.get("max_steps") or math.ceil(train.get("budget", 4.0) * expected_steps)
    # Warm-up of at most a tenth of the expected run: a fine-tuned run on 8 KiB
    # peaks within 12-50 steps, inside a 100-step warm-up, and the sweep in
    # trainer/BENCH.md measured 0.057 nats/byte lower loss with 25 steps there
    # (and 0.04 higher at 64 KiB, where this rule keeps about 85).
    warmup = train.get("warmup", int(np.clip(round(expected_steps / 10), 10, 100)))
    return Settings(
        lr=train.get("lr", {}).get(size, LR_TABLE[size]), batch=batch,
        eval_interval=train.get("eval_interval", eval_interval_for(data_tokens, batch, CTX)),
        max_steps=max_steps, patience=train.get("patience", 5), smooth=train.get("smooth", 0.5),
        warmup=warmup, eval_seqs=train.get("eval_seqs", 256),
        report_seqs=train.get("report_seqs", 1024), ctx=CTX)


def pretrain_settings(spec: Spec, size: str) -> Settings:
    return Settings(lr=spec.train.get("lr", {}).get(size, LR_TABLE[size]),
                    batch=spec.train.get("batch", batch_for(None)), eval_interval=spec.pretrain["eval_interval"],
                    max_steps=0, warmup=spec.train.get("warmup", 100), eval_seqs=spec.pretrain["eval_seqs"],
                    report_seqs=0, total_tokens=spec.pretrain["tokens"], ctx=CTX)


def _expand(spec: Spec, g: dict | None, runs: list[dict]) -> None:
    """Pre-training jobs and cells of the [grid] product and the [[run]] list.

    A pre-training run saves a checkpoint at every pretrain amount of the spec
    (and [pretrain].checkpoints): its identity includes them, so a spec that
    lists the same checkpoints as an earlier grid reuses that grid's
    pre-training in the same output directory.
    """
    ckpts = tuple(spec.pretrain["checkpoints"])
    jobs: dict[tuple[str, str, int], PretrainJob] = {}

    def job(size: str, src: str, ps: int) -> PretrainJob:
        if (size, src, ps) not in jobs:
            jobs[(size, src, ps)] = PretrainJob(size, src, spec.pretrain["tokens"], ckpts, ps,
                                                pretrain_settings(spec, size))
        return jobs[(size, src, ps)]

    cells: dict[str, Cell] = {}
    if g is not None:
        ft_sources = [s for s in g["sources"] if s != SCRATCH]
        p_pos = sorted(p for p in g.get("pretrain_tokens", []) if p > 0)
        for size in g["sizes"]:
            seeds = spec.pretrain["seeds"] if size in spec.pretrain["seed_sizes"] else spec.pretrain["seeds"][:1]
            for src in ft_sources:
                for ps in seeds:
                    job(size, src, ps)
        scratch = SCRATCH in g["sources"] or 0 in g.get("pretrain_tokens", [])
        dmax = g.get("data_tokens_max_by_size", {})
        multi = g.get("multi_seed_max_data_tokens")
        scratch_only = g.get("scratch_data_tokens", [])
        for size in g["sizes"]:
            for target in g["targets"]:
                for D in sorted(set(g["data_tokens"]) | set(scratch_only)):
                    if D > dmax.get(size, D):
                        continue
                    st = cell_settings(spec.train, size, D)
                    seeds = g["seeds"] if multi is None or D <= multi else g["seeds"][:1]
                    for seed in seeds:
                        if scratch:
                            c = Cell(size, target, SCRATCH, 0, D, seed, st, None)
                            cells[c.run_id] = c
                        if D not in g["data_tokens"]:
                            continue
                        for (jsize, src, ps), jb in list(jobs.items()):
                            if jsize != size or (ps != spec.pretrain["seeds"][0] and seed != seeds[0]):
                                continue  # extra pre-training seeds: one fine-tuning seed each
                            for p in p_pos:
                                c = Cell(size, target, src, p, D, seed, st, jb.job_id, ps)
                                cells[c.run_id] = c
    for r in runs:
        st = cell_settings(spec.train, r["size"], r["data_tokens"])
        jb = None if r["source"] == SCRATCH else job(r["size"], r["source"], r["pretrain_seed"]).job_id
        c = Cell(r["size"], r["target"], r["source"], r["pretrain_tokens"], r["data_tokens"], r["seed"], st, jb,
                 r["pretrain_seed"])
        cells[c.run_id] = c
    spec.pretrain_jobs = list(jobs.values())
    spec.cells = list(cells.values())


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise SpecError(f"cannot write {type(v).__name__} value {v!r} as TOML")


def union_spec(specs: list[Spec], name: str) -> str:
    """One spec (TOML text) of every cell of `specs`, as [[run]] tables: the
    grids' union, trained alike, with the same run and pre-training ids.
    Specs that train differently ([train], or [pretrain] other than its
    seeds) cannot be merged."""
    first = specs[0]
    keys = ("tokens", "eval_interval", "eval_seqs", "checkpoints")
    for s in specs[1:]:
        if s.train != first.train:
            raise SpecError(f"specs {first.name!r} and {s.name!r} train differently ([train]); they cannot be one grid")
        if any(s.pretrain[k] != first.pretrain[k] for k in keys):
            raise SpecError(f"specs {first.name!r} and {s.name!r} pre-train differently ([pretrain]); "
                            f"they cannot be one grid")
    seeds = sorted({x for s in specs for x in s.pretrain["seeds"]})
    pre = {k: first.pretrain[k] for k in keys} | {"seeds": seeds}
    lines = [f"name = {_toml_value(name)}",
             f"description = {_toml_value('the union of ' + ', '.join(s.name for s in specs))}", "", "[pretrain]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in pre.items()]
    lines += ["", "[train]"] + [f"{k} = {_toml_value(v)}" for k, v in first.train.items()]
    seen = set()
    for s in specs:
        for c in s.cells:
            if c.run_id in seen:
                continue
            seen.add(c.run_id)
            run = dict(size=c.size, target=c.target, source=c.source, data_tokens=c.data_tokens,
                       pretrain_tokens=c.pretrain_tokens, seed=c.seed)
            if c.source != SCRATCH:
                run["pretrain_seed"] = c.pretrain_seed
            lines += ["", "[[run]]"] + [f"{k} = {_toml_value(v)}" for k, v in run.items()]
    text = "\n".join(lines) + "\n"
    merged = parse_spec(tomllib.loads(text), text, default_name=name)
    if {c.run_id for c in merged.cells} != seen:  # the identities must survive the rewrite
        raise SpecError(f"the union of {', '.join(s.name for s in specs)} would change run ids; not merged")
    return text
