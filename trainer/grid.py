"""Grid specs (TOML) -> runs -> packed groups -> per-run result files.

Layout of an output directory:
  specs/<name>.toml                     each spec run into it
  pretrain/<job>/p<tokens>.pt           pre-training checkpoints (+ resume.pt while running)
  pretrain/<job>/result.json            the finished pre-training run
  runs/<run_id>.json                    one finished fine-tuning/scratch run

Every file is written to a temporary name and renamed, and a group's results
are written only when the group ends, so a kill at any moment loses at most
the groups in flight. A run id carries a hash of every setting that shapes
the run, so a finished run is reused only by a spec that would train it the
same way. Groups are formed from all cells of a spec (not only the pending
ones), so a resumed grid trains exactly the groups an uninterrupted one would.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trainer.data import DISTRIBUTIONS, SOURCES, Corpora, Stream, source_mix, stable_int
from trainer.model import SIZES, config_for
from trainer.train import (
    LR_TABLE, Member, Settings, batch_for, eval_interval_for, load_checkpoint, save_checkpoint, train_group,
)

CTX = 256
_TOP_KEYS = {"name", "description", "grid", "pretrain", "train"}
_GRID_KEYS = {"sizes", "targets", "sources", "data_tokens", "pretrain_tokens", "seeds", "multi_seed_max_data_tokens",
              "data_tokens_max_by_size"}
_PRE_KEYS = {"tokens", "eval_interval", "seed", "eval_seqs"}
_TRAIN_KEYS = {"patience", "min_delta", "eval_seqs", "max_steps", "max_epochs", "warmup", "pack", "lr", "batch", "eval_interval"}


class SpecError(ValueError):
    """A problem with a grid spec, named in one line."""


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def atomic_write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


@dataclass(frozen=True)
class PretrainJob:
    size: str
    source: str
    tokens: int
    checkpoints: tuple[int, ...]
    settings: dict

    @property
    def job_id(self) -> str:
        return f"pre.{self.source}.{self.size}.t{self.tokens}-{_hash([self.checkpoints, self.settings])}"


@dataclass(frozen=True)
class Cell:
    size: str
    target: str
    source: str  # "none" for scratch
    pretrain_tokens: int  # 0 for scratch
    data_tokens: int
    seed: int
    settings: dict
    pretrain_job: str | None

    @property
    def run_id(self) -> str:
        return (f"{self.target}.{self.source}.{self.size}.p{self.pretrain_tokens}.d{self.data_tokens}.s{self.seed}"
                f"-{_hash([self.settings, self.pretrain_job])}")

    def coords(self) -> dict:
        cfg = config_for(self.size)
        return dict(target=self.target, source=self.source, size=self.size, n_layer=cfg.n_layer,
                    d_model=cfg.d_model, pretrain_tokens=self.pretrain_tokens, data_tokens=self.data_tokens,
                    seed=self.seed)


@dataclass
class Spec:
    name: str
    text: str
    sizes: list[str]
    targets: list[str]
    sources: list[str]
    data_tokens: list[int]
    pretrain_tokens: list[int]
    seeds: list[int]
    multi_seed_max: int | None
    data_max_by_size: dict[str, int]
    pretrain: dict
    train: dict
    pretrain_jobs: list[PretrainJob] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)

    def corpora_needed(self) -> set[str]:
        need = set(self.targets)
        for s in self.sources:
            if s != "none":
                need |= set(source_mix(s))
        return need


def _list(d: dict, key: str, kind, where: str, required=True) -> list:
    if key not in d:
        if required:
            raise SpecError(f"{where}: missing `{key}`")
        return []
    v = d[key]
    if not isinstance(v, list) or not v:
        raise SpecError(f"{where}.{key} must be a non-empty list")
    out = []
    for x in v:
        if kind is int:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or (isinstance(x, float) and not x.is_integer()):
                raise SpecError(f"{where}.{key}: {x!r} is not a whole number")
            x = int(x)
        elif not isinstance(x, kind):
            raise SpecError(f"{where}.{key}: {x!r} is not a {kind.__name__}")
        out.append(x)
    dup = sorted({x for x in out if out.count(x) > 1}, key=str)
    if dup:
        raise SpecError(f"{where}.{key} repeats {dup}: duplicate cells")
    return out


def _unknown(d: dict, allowed: set[str], where: str) -> None:
    bad = sorted(set(d) - allowed)
    if bad:
        raise SpecError(f"{where}: unknown key(s) {', '.join(bad)}; allowed: {', '.join(sorted(allowed))}")


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    if not path.exists():
        raise SpecError(f"spec {path} does not exist")
    text = path.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"spec {path} is not valid TOML: {e}") from None
    return parse_spec(raw, text, default_name=path.stem)


def parse_spec(raw: dict, text: str = "", default_name: str = "grid") -> Spec:
    _unknown(raw, _TOP_KEYS, "spec")
    g = raw.get("grid")
    if not isinstance(g, dict):
        raise SpecError("spec: missing [grid] table")
    _unknown(g, _GRID_KEYS, "[grid]")
    pre = raw.get("pretrain", {})
    tr = raw.get("train", {})
    _unknown(pre, _PRE_KEYS, "[pretrain]")
    _unknown(tr, _TRAIN_KEYS, "[train]")
    sizes = _list(g, "sizes", str, "[grid]")
    for s in sizes:
        if s not in SIZES:
            raise SpecError(f"[grid].sizes: unknown model size {s!r}; known: {', '.join(SIZES)}")
    targets = _list(g, "targets", str, "[grid]")
    for t in targets:
        if t not in DISTRIBUTIONS:
            raise SpecError(f"[grid].targets: unknown corpus {t!r}; known: {', '.join(DISTRIBUTIONS)}")
    sources = _list(g, "sources", str, "[grid]")
    for s in sources:
        if s != "none":
            try:
                source_mix(s)
            except ValueError as e:
                raise SpecError(f"[grid].sources: {e}") from None
    data_tokens = _list(g, "data_tokens", int, "[grid]")
    if min(data_tokens) < CTX + 1:
        raise SpecError(f"[grid].data_tokens must be at least one sequence ({CTX + 1} bytes), got {min(data_tokens)}")
    seeds = _list(g, "seeds", int, "[grid]")
    p_list = _list(g, "pretrain_tokens", int, "[grid]", required=any(s != "none" for s in sources))
    if p_list and min(p_list) < 0:
        raise SpecError(f"[grid].pretrain_tokens must be >= 0, got {min(p_list)}")
    multi = g.get("multi_seed_max_data_tokens")
    if multi is not None and (not isinstance(multi, int) or multi <= 0):
        raise SpecError("[grid].multi_seed_max_data_tokens must be a positive whole number")

    dmax = g.get("data_tokens_max_by_size", {})
    if not isinstance(dmax, dict) or any(k not in sizes or not isinstance(v, int) or v <= 0 for k, v in dmax.items()):
        raise SpecError("[grid].data_tokens_max_by_size must map sizes of the grid to positive whole numbers")
    ft_sources = [s for s in sources if s != "none"]
    p_pos = sorted(p for p in p_list if p > 0)
    budget = pre.get("tokens", max(p_pos) if p_pos else 0)
    if p_pos and (not isinstance(budget, (int, float)) or budget < max(p_pos)):
        raise SpecError(f"[pretrain].tokens ({budget}) must be at least the largest pretrain_tokens ({max(p_pos)})")
    if ft_sources and not p_pos:
        raise SpecError("[grid].sources names a pre-training source but pretrain_tokens has no positive value")
    for k in ("patience", "eval_seqs", "max_steps", "warmup", "pack"):
        if k in tr and (not isinstance(tr[k], int) or tr[k] <= 0):
            raise SpecError(f"[train].{k} must be a positive whole number, got {tr[k]!r}")
    lr_over = tr.get("lr", {})
    if not isinstance(lr_over, dict) or any(k not in SIZES for k in lr_over):
        raise SpecError(f"[train].lr must be a table of size -> learning rate over {', '.join(SIZES)}")

    spec = Spec(name=raw.get("name", default_name), text=text, sizes=sizes, targets=targets, sources=sources,
                data_tokens=data_tokens, pretrain_tokens=p_list, seeds=seeds, multi_seed_max=multi,
                data_max_by_size=dmax,
                pretrain=dict(tokens=int(budget), eval_interval=int(pre.get("eval_interval", 250)),
                              seed=int(pre.get("seed", 0)), eval_seqs=int(pre.get("eval_seqs", 256))),
                train=tr)
    _expand(spec, ft_sources, p_pos)
    return spec


def cell_settings(train: dict, size: str, data_tokens: int | None) -> dict:
    batch = int(train.get("batch", batch_for(data_tokens)))
    return dict(
        lr=float(train.get("lr", {}).get(size, LR_TABLE[size])),
        batch=batch,
        eval_interval=int(train.get("eval_interval", eval_interval_for(data_tokens, batch, CTX))) if data_tokens else 0,
        patience=int(train.get("patience", 5)),
        min_delta=float(train.get("min_delta", 1e-3)),
        warmup=int(train.get("warmup", 100)),
        eval_seqs=int(train.get("eval_seqs", 256)),
        max_steps=int(train.get("max_steps", 20_000)),
        max_epochs=float(train.get("max_epochs", 2_000.0)),
        ctx=CTX,
    )


def pretrain_settings(spec: Spec, size: str) -> dict:
    st = cell_settings(spec.train, size, None)
    st.update(eval_interval=spec.pretrain["eval_interval"], eval_seqs=spec.pretrain["eval_seqs"],
              seed=spec.pretrain["seed"])
    for k in ("patience", "min_delta", "max_steps", "max_epochs"):
        st.pop(k)
    return st


def _expand(spec: Spec, ft_sources: list[str], p_pos: list[int]) -> None:
    jobs: dict[tuple[str, str], PretrainJob] = {}
    if ft_sources:
        ckpts = tuple(sorted(set(p_pos) | {spec.pretrain["tokens"]}))
        for size in spec.sizes:
            for src in ft_sources:
                jobs[(size, src)] = PretrainJob(size, src, spec.pretrain["tokens"], ckpts, pretrain_settings(spec, size))
    cells: dict[str, Cell] = {}
    scratch = "none" in spec.sources or 0 in spec.pretrain_tokens
    for size in spec.sizes:
        for target in spec.targets:
            for D in spec.data_tokens:
                if D > spec.data_max_by_size.get(size, D):
                    continue
                st = cell_settings(spec.train, size, D)
                seeds = spec.seeds if spec.multi_seed_max is None or D <= spec.multi_seed_max else spec.seeds[:1]
                for seed in seeds:
                    if scratch:
                        c = Cell(size, target, "none", 0, D, seed, st, None)
                        cells[c.run_id] = c
                    for src in ft_sources:
                        for p in p_pos:
                            c = Cell(size, target, src, p, D, seed, st, jobs[(size, src)].job_id)
                            cells[c.run_id] = c
    spec.pretrain_jobs = list(jobs.values())
    spec.cells = list(cells.values())


# --- groups ---
def cell_groups(spec: Spec) -> list[list[Cell]]:
    """Cells of one size, kind (scratch or fine-tuned) and batch train as one
    ensemble, up to `pack` members, ordered by D_F so that each pack holds
    runs of similar length (stopped members are dropped as the pack thins)."""
    pack = int(spec.train.get("pack", 32))
    by: dict[tuple, list[Cell]] = {}
    for c in spec.cells:
        by.setdefault((SIZES[c.size], c.size, c.source == "none", c.settings["batch"]), []).append(c)
    groups = []
    for key in sorted(by):
        cs = sorted(by[key], key=lambda c: (c.data_tokens, c.run_id))
        groups += [cs[i:i + pack] for i in range(0, len(cs), pack)]
    return groups


def pretrain_groups(spec: Spec) -> list[list[PretrainJob]]:
    pack = int(spec.train.get("pack", 32))
    by: dict[str, list[PretrainJob]] = {}
    for j in spec.pretrain_jobs:
        by.setdefault(j.size, []).append(j)
    return [js[i:i + pack] for size in sorted(by, key=lambda s: SIZES[s]) for js in [by[size]]
            for i in range(0, len(js), pack)]


# --- cost estimate (for --dry-run) ---
# Not yet measured on a GPU (trainer/BENCH.md says how to). A pack's step
# takes the longer of its arithmetic, at an effective 2e14 FLOP/s (20% of an
# H100's dense bf16 peak), and a floor of 4 ms for the ~200 kernel launches
# and the Python of one eager step; a pack lasts as long as its longest run.
EFFECTIVE_FLOPS = 2.0e14
STEP_FLOOR_S = 4e-3


def flops_per_token(size: str) -> float:
    """Training FLOPs per token: 6N plus causal attention and the output head."""
    L, d = SIZES[size]
    return 6 * 12 * L * d * d + 6 * L * CTX * d + 6 * d * 256


def expected_tokens(c: Cell) -> float:
    """Rough tokens to early stopping: PILOT.md's scratch runs stopped after
    300-2,200 steps of 8K tokens on small D_F, fine-tuned ones 3-5x sooner (a
    CPU check on real data: 25k fine-tuned on 16K and 128K bytes stopped after
    2.5M and 16M tokens); large D_F takes several epochs."""
    if c.source == "none":
        return max(16e6, 6.0 * c.data_tokens)
    return max(4e6, 4.0 * c.data_tokens)


def _step_s(size: str, tokens_per_step: float) -> float:
    return max(STEP_FLOOR_S, tokens_per_step * flops_per_token(size) / EFFECTIVE_FLOPS)


def estimate(spec: Spec, grid: "Grid | None" = None) -> dict:
    """Seconds on one H100 for what is still to do (everything without a grid
    dir), with packs run one after another (--workers 1)."""
    pre = 0.0
    for g in pretrain_groups(spec):
        g = [j for j in g if not (grid and grid.job_done(j))]
        if g:
            b = g[0].settings["batch"] * CTX
            pre += math.ceil(g[0].tokens / b) * _step_s(g[0].size, b * len(g))
    runs = 0.0
    for g in cell_groups(spec):
        g = [c for c in g if not (grid and grid.done(c))]
        if g:
            b = g[0].settings["batch"] * CTX
            steps = [min(expected_tokens(c) / b, g[0].settings["max_steps"]) for c in g]
            # Stopped members leave the pack as it thins: charge each run's own steps
            # at the width of the pack, but at least the longest run's steps.
            runs += max(max(steps), sum(steps) / len(g)) * _step_s(g[0].size, b * len(g))
    return dict(pretrain_s=pre, runs_s=runs, total_s=pre + runs)


# --- running ---
class Grid:
    def __init__(self, spec: Spec, out: Path, corpora: Path | None):
        self.spec, self.out = spec, Path(out)
        self.corpora_root = corpora
        self._corpora: Corpora | None = None

    @property
    def corpora(self) -> Corpora:
        if self._corpora is None:
            from trainer.corpora import default_root

            self._corpora = Corpora(self.corpora_root or default_root())
        return self._corpora

    def run_path(self, c: Cell) -> Path:
        return self.out / "runs" / f"{c.run_id}.json"

    def job_dir(self, j: PretrainJob) -> Path:
        return self.out / "pretrain" / j.job_id

    def ckpt_path(self, job_id: str, p: int) -> Path:
        return self.out / "pretrain" / job_id / f"p{p}.pt"

    def done(self, c: Cell) -> bool:
        return self.run_path(c).exists()

    def job_done(self, j: PretrainJob) -> bool:
        return (self.job_dir(j) / "result.json").exists()

    def job_needed(self, j: PretrainJob) -> bool:
        """Not run yet, or a pending run needs one of its checkpoints and it
        is gone (checkpoints may be left behind when only results travel)."""
        if not self.job_done(j):
            return True
        return any(c.pretrain_job == j.job_id and not self.done(c)
                   and not self.ckpt_path(j.job_id, c.pretrain_tokens).exists() for c in self.spec.cells)

    def validate(self) -> None:
        """Everything that can be checked before training starts."""
        names = set(self.corpora.manifest["distributions"])
        missing = sorted(self.spec.corpora_needed() - names)
        if missing:
            raise SpecError(f"corpora {', '.join(missing)} are not in {self.corpora.root} (has: {', '.join(sorted(names))})")
        for t in self.spec.targets:
            n = self.corpora.split(t, "train").size
            if max(self.spec.data_tokens) > n:
                raise SpecError(f"D_F={max(self.spec.data_tokens)} exceeds the {n} bytes of {t}/train")
        for j in self.spec.pretrain_jobs:
            cfg = config_for(j.size)
            for p in j.checkpoints:
                path = self.ckpt_path(j.job_id, p)
                if path.exists():
                    load_checkpoint(path, cfg)

    def stream_for(self, source: str) -> Stream:
        mix = source_mix(source)
        return Stream([self.corpora.split(n, "train") for n in mix], list(mix.values()))

    def val_for(self, source: str) -> Stream:
        mix = source_mix(source)
        return Stream([self.corpora.split(n, "val") for n in mix], list(mix.values()))

    def provenance(self) -> dict:
        """The corpus build the runs saw: sha256 of each split of each distribution."""
        dists = self.corpora.manifest["distributions"]
        hashes = {n: {s: d.get("splits", {}).get(s, {}).get("sha256") for s in ("train", "val")}
                  for n, d in sorted(dists.items())}
        return dict(corpora=Path(self.corpora.root).name, manifest=hashes, code_version=_git_commit())

    def pending(self) -> tuple[list[list[PretrainJob]], list[list[Cell]]]:
        pg = [[j for j in g if self.job_needed(j)] for g in pretrain_groups(self.spec)]
        cg = [[c for c in g if not self.done(c)] for g in cell_groups(self.spec)]
        return [g for g in pg if g], [g for g in cg if g]

    def run_pretrain_group(self, jobs: list[PretrainJob], device=None, compile=None, deadline=None, log=print) -> bool:
        size = jobs[0].size
        cfg = config_for(size)
        st = jobs[0].settings
        # One init per size, whatever the source, so sources are compared from the same start.
        members = [
            Member(j.job_id, stable_int("init", st["seed"], size), self.stream_for(j.source), self.val_for(j.source),
                   checkpoints=list(j.checkpoints))
            for j in jobs
        ]
        s = Settings(lr=st["lr"], batch=st["batch"], eval_interval=st["eval_interval"], warmup=st["warmup"],
                     eval_seqs=st["eval_seqs"], total_tokens=jobs[0].tokens)
        # Resume state of a packed group lives with its first job.
        resume = self.job_dir(jobs[0]) / f"resume-{_hash([j.job_id for j in jobs])}.pt"
        by_id = {j.job_id: j for j in jobs}

        def on_ckpt(member: Member, p: int, tokens: int, state: dict) -> None:
            save_checkpoint(self.ckpt_path(member.run_id, p), cfg, state,
                            dict(job=member.run_id, source=by_id[member.run_id].source, pretrain_tokens=p,
                                 tokens_seen=tokens))

        res = train_group(cfg, members, s, device=device, compile=compile, on_checkpoint=on_ckpt,
                          resume_path=resume, deadline=deadline)
        if res is None:
            log(f"pre-training {size} stopped at the time limit; it resumes on the next call")
            return False
        for j, r in zip(jobs, res):
            atomic_write_json(self.job_dir(j) / "result.json",
                              dict(job=asdict(j), job_id=j.job_id, result=r, provenance=self.provenance()))
        resume.unlink(missing_ok=True)
        return True

    def run_cell_group(self, cells: list[Cell], device=None, compile=None) -> list[dict]:
        size = cells[0].size
        cfg = config_for(size)
        st = cells[0].settings
        members = []
        for c in cells:
            init = None
            if c.pretrain_job is not None:
                init = load_checkpoint(self.ckpt_path(c.pretrain_job, c.pretrain_tokens), cfg)
            sub = self.corpora.subset(c.target, c.data_tokens, c.seed)
            # Scratch and fine-tuned runs of one seed see the same data and
            # (for scratch) the same init across D_F.
            members.append(Member(c.run_id, stable_int("run", c.seed, size, c.target), Stream([sub], [1.0]),
                                  self.val_for(c.target), init=init, data_tokens=c.data_tokens,
                                  eval_interval=c.settings["eval_interval"]))
        s = Settings(lr=st["lr"], batch=st["batch"], eval_interval=st["eval_interval"], patience=st["patience"],
                     min_delta=st["min_delta"],
                     warmup=st["warmup"], eval_seqs=st["eval_seqs"], max_steps=st["max_steps"],
                     max_epochs=st["max_epochs"])
        res = train_group(cfg, members, s, device=device, compile=compile)
        prov = self.provenance()
        for c, r in zip(cells, res):
            atomic_write_json(self.run_path(c), dict(cell=c.coords(), run_id=c.run_id, settings=c.settings,
                                                     pretrain_job=c.pretrain_job, result=r, provenance=prov,
                                                     n_params=_n_params(size)))
        return res

    def save_spec(self) -> None:
        atomic_write_json(self.out / "specs" / f"{self.spec.name}.json",
                          dict(name=self.spec.name, text=self.spec.text,
                               run_ids=[c.run_id for c in self.spec.cells]))


_N_CACHE: dict[str, int] = {}


def _n_params(size: str) -> int:
    if size not in _N_CACHE:
        from trainer.model import EnsembleGPT

        _N_CACHE[size] = EnsembleGPT(config_for(size), [0]).n_params()
    return _N_CACHE[size]


def _run_task(spec: Spec, out: Path, corpora: Path | None, kind: str, idx: int, device, compile,
              deadline: float | None) -> tuple[bool, int]:
    """Run one group (the pending members of group idx); in a worker process
    or in-process. Returns (finished, runs finished)."""
    import torch

    if device is not None and torch.device(device).type == "cpu":
        torch.set_num_threads(1)  # workers share the cores; tiny models gain nothing from threads
    grid = Grid(spec, out, corpora)
    if kind == "pre":
        jobs = [j for j in pretrain_groups(spec)[idx] if grid.job_needed(j)]
        return grid.run_pretrain_group(jobs, device=device, compile=compile, deadline=deadline), 0
    cells = [c for c in cell_groups(spec)[idx] if not grid.done(c)]
    grid.run_cell_group(cells, device=device, compile=compile)
    return True, len(cells)


class _InProcess:
    """The executor interface, running each task at submit (workers=1)."""

    def submit(self, fn, *args):
        from concurrent.futures import Future

        f = Future()
        try:
            f.set_result(fn(*args))
        except BaseException as e:  # re-raised by f.result()
            f.set_exception(e)
        return f

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def run_grid(spec: Spec, out: Path, corpora: Path | None = None, time_limit: float | None = None,
             device=None, compile=None, workers: int = 1, log=print) -> dict:
    """Run every pending group, `workers` at a time (separate processes when
    more than one, e.g. to share a GPU); start no new group past time_limit
    seconds. Fine-tuning groups start once their checkpoints exist."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    import multiprocessing

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    t0 = time.monotonic()
    deadline = t0 + time_limit if time_limit is not None else None
    grid = Grid(spec, out, corpora)
    grid.validate()
    grid.save_spec()
    pgs, cgs = pretrain_groups(spec), cell_groups(spec)
    tasks = [("pre", i) for i, g in enumerate(pgs) if any(grid.job_needed(j) for j in g)]
    tasks += [("cell", i) for i, g in enumerate(cgs) if any(not grid.done(c) for c in g)]

    def ready(task) -> bool:
        return task[0] == "pre" or all(
            c.pretrain_job is None or grid.ckpt_path(c.pretrain_job, c.pretrain_tokens).exists() for c in cgs[task[1]])

    pool = _InProcess() if workers == 1 else ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"))
    finished, stopped, blocked = 0, False, False
    n_total = sum(len(cgs[i]) if k == "cell" else len(pgs[i]) for k, i in tasks)
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=Console(stderr=True), transient=False) as bar:
            task_bar = bar.add_task(spec.name, total=n_total)
            in_flight: dict = {}
            while True:
                while len(in_flight) < workers and not stopped:
                    if deadline is not None and time.monotonic() > deadline:
                        stopped = True
                        break
                    nxt = next((t for t in tasks if ready(t)), None)
                    if nxt is None:
                        break
                    tasks.remove(nxt)
                    g = pgs[nxt[1]] if nxt[0] == "pre" else cgs[nxt[1]]
                    bar.update(task_bar, description=f"{nxt[0]} {g[0].size} x{len(g)}")
                    in_flight[pool.submit(_run_task, spec, out, corpora, nxt[0], nxt[1], device, compile,
                                          deadline)] = (nxt, len(g))
                if not in_flight:
                    blocked = bool(tasks) and not stopped
                    break
                done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for f in done:
                    (kind, idx), n = in_flight.pop(f)
                    ok, runs = f.result()
                    finished += runs
                    if not ok:
                        log(f"pre-training {pgs[idx][0].size} stopped at the time limit; it resumes on the next call")
                        stopped = True
                    bar.advance(task_bar, n)
                    # one line per group as well: the bar alone shows nothing in a log file
                    g = pgs[idx] if kind == "pre" else cgs[idx]
                    log(f"{'pre-training' if kind == 'pre' else 'runs'} {g[0].size} x{n} done: "
                        f"{bar.tasks[0].completed:.0f}/{n_total} runs, {time.monotonic() - t0:.0f} s")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if blocked:
        log("some runs wait for pre-training checkpoints that were not made")
    pg, cg = grid.pending()
    return dict(spec=spec.name, finished_runs=finished, remaining_runs=sum(len(g) for g in cg),
                remaining_pretrain=sum(len(g) for g in pg), wall_s=round(time.monotonic() - t0, 1),
                complete=not pg and not cg)


def status(out: Path) -> list[dict]:
    """Per spec recorded in out: finished / total runs and their statuses."""
    out = Path(out)
    rows = []
    for sp in sorted((out / "specs").glob("*.json")):
        info = json.loads(sp.read_text())
        counts: dict[str, int] = {}
        for rid in info["run_ids"]:
            p = out / "runs" / f"{rid}.json"
            st = json.loads(p.read_text())["result"]["status"] if p.exists() else "pending"
            counts[st] = counts.get(st, 0) + 1
        rows.append(dict(spec=info["name"], total=len(info["run_ids"]), **counts))
    return rows


def load_results(out: Path, spec_name: str | None = None) -> tuple[list[dict], dict]:
    """The finished run records of one spec in out (all runs if the directory
    holds a single spec), and the spec record."""
    out = Path(out)
    specs = {json.loads(p.read_text())["name"]: json.loads(p.read_text()) for p in (out / "specs").glob("*.json")}
    if not specs:
        raise SpecError(f"{out} holds no grid (no specs/ directory): run `transfer-train grid run` first")
    if spec_name is None:
        if len(specs) > 1:
            raise SpecError(f"{out} holds several grids ({', '.join(sorted(specs))}): choose one with --spec")
        spec_name = next(iter(specs))
    if spec_name not in specs:
        raise SpecError(f"{out} holds no grid named {spec_name!r} (has: {', '.join(sorted(specs))})")
    info = specs[spec_name]
    recs = []
    for rid in info["run_ids"]:
        p = out / "runs" / f"{rid}.json"
        if p.exists():
            recs.append(json.loads(p.read_text()))
    return recs, info


def _git_commit() -> str:
    """The commit of this code: $TRANSFER_CODE_VERSION where the tree travels without .git
    (a copied working tree on a GPU machine), else git's HEAD."""
    import subprocess

    if os.environ.get("TRANSFER_CODE_VERSION"):
        return os.environ["TRANSFER_CODE_VERSION"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def export(out: Path, dest: Path, spec_name: str | None = None) -> dict:
    """Write the loss-grid netCDF of DESIGN.md from the finished runs."""
    import numpy as np
    import xarray as xr

    recs, info = load_results(out, spec_name)
    if not recs:
        raise SpecError(f"{out}: no finished runs of grid {info['name']!r} to export")
    recs.sort(key=lambda r: r["run_id"])
    n_eval = max(len(r["result"]["curve_tokens"]) for r in recs)

    def pad(key):
        a = np.full((len(recs), n_eval), np.nan)
        for i, r in enumerate(recs):
            v = r["result"][key]
            a[i, :len(v)] = v
        return a

    cells = [r["cell"] for r in recs]
    res = [r["result"] for r in recs]
    coords = dict(
        run=np.array([r["run_id"] for r in recs]),
        target=("run", np.array([c["target"] for c in cells])),
        source=("run", np.array([c["source"] for c in cells])),
        n_params=("run", np.array([r["n_params"] for r in recs], dtype=np.int64)),
        n_layer=("run", np.array([c["n_layer"] for c in cells], dtype=np.int64)),
        d_model=("run", np.array([c["d_model"] for c in cells], dtype=np.int64)),
        pretrain_tokens=("run", np.array([c["pretrain_tokens"] for c in cells], dtype=np.int64)),
        data_tokens=("run", np.array([c["data_tokens"] for c in cells], dtype=np.int64)),
        seed=("run", np.array([c["seed"] for c in cells], dtype=np.int64)),
    )
    data = dict(
        loss=("run", np.array([x["loss"] for x in res], dtype=np.float64)),
        best_step=("run", np.array([x["best_step"] for x in res], dtype=np.int64)),
        curve_tokens=(("run", "eval"), pad("curve_tokens")),
        curve_loss=(("run", "eval"), pad("curve_loss")),
        train_loss=(("run", "eval"), pad("train_loss")),
        status=("run", np.array([x["status"] for x in res])),
        status_reason=("run", np.array([x["status_reason"] for x in res])),
        tokens_seen=("run", np.array([x["tokens_seen"] for x in res], dtype=np.int64)),
    )
    manifests = {json.dumps(r["provenance"]["manifest"], sort_keys=True) for r in recs}
    if len(manifests) > 1:
        raise SpecError(f"{out}: runs of grid {info['name']!r} were trained on different corpus builds")
    manifest = json.loads(manifests.pop())
    devices = sorted({x["device"] for x in res})
    # A group's wall time is shared by its members: count each group once.
    walls = {(x["group_wall_s"], x["device"], x["group_size"]) for x in res}
    attrs = dict(
        loss_units="nats", token="byte", vocab_size=256,
        corpus_names=json.dumps(sorted({c["target"] for c in cells} | {
            n for c in cells if c["source"] != "none" for n in source_mix(c["source"])})),
        corpus_manifest=json.dumps(manifest, sort_keys=True),
        # the commits the runs were trained with (recorded per run), then the exporter's
        code_version=", ".join(sorted({r["provenance"].get("code_version", "unrecorded") for r in recs})),
        export_code_version=_git_commit(),
        hardware=", ".join(devices),
        wall_time_s=float(sum(w[0] for w in walls)),
        spec=info["text"],
        spec_name=info["name"],
        pretrain=json.dumps(_pretrain_records(out, recs), sort_keys=True),
        runs_expected=len(info["run_ids"]),
    )
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    ds.to_netcdf(tmp, engine="h5netcdf")
    os.replace(tmp, dest)
    return dict(runs=len(recs), expected=len(info["run_ids"]), path=str(dest))


def _pretrain_records(out: Path, recs: list[dict]) -> dict:
    """Final source validation loss, tokens and wall time of each pre-training
    run the exported runs start from."""
    jobs = sorted({r["pretrain_job"] for r in recs if r.get("pretrain_job")})
    outp = {}
    for j in jobs:
        p = Path(out) / "pretrain" / j / "result.json"
        if p.exists():
            r = json.loads(p.read_text())["result"]
            outp[j] = dict(final_val_loss=r["curve_loss"][-1] if r["curve_loss"] else math.nan,
                           tokens=r["tokens_seen"], wall_s=r["group_wall_s"], device=r["device"])
    return outp


__all__ = ["SOURCES", "Spec", "SpecError", "load_spec", "parse_spec", "run_grid", "status", "export", "estimate"]
