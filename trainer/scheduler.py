"""Running a grid: an output directory of per-run records, and a scheduler
that trains its pending groups, longest (or shortest) first, resumably.

Layout of an output directory:
  specs/<name>.json                     each spec run into it
  pretrain/<job>/p<tokens>.pt           pre-training checkpoints (+ resume-*.pt while running)
  pretrain/<job>/result.json            the finished pre-training run
  runs/<run_id>.json                    one finished fine-tuning/scratch run
  resume/resume-<hash>.pt               state of a fine-tuning/scratch group in flight
  .lock                                 held by the one `grid run` working in it

Every file is written to a temporary name and renamed, and a group's records
are written only when the group ends. Groups in flight save their state every
few minutes and at a time limit, so a kill at any moment loses at most those
minutes, and a group too long for one sitting finishes over several. A run id carries a hash of every setting that shapes
the run, so a finished run is reused only by a spec that would train it the
same way. A record that cannot be read back is redone, with a warning.
"""
from __future__ import annotations

import fcntl
import json
import math
import multiprocessing
import os
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from trainer.data import Corpora, Stream, source_mix, stable_int
from trainer.files import atomic_write_json, sweep_temps
from trainer.model import config_for
from trainer.plan import (
    RunLength, cell_groups, check_sizes, default_pack, estimate, flops_per_token, group_seconds, pretrain_groups,
    pretrain_seconds,
)
from trainer.provenance import code_version, corpus_hashes
from trainer.spec import CTX, Cell, PretrainJob, Spec, SpecError, spec_hash
from trainer.train import Member, ResumeError, load_checkpoint, save_checkpoint, train_group


class GridLocked(RuntimeError):
    """Another `grid run` is working in this output directory."""


def read_record(path: Path) -> dict | None:
    """A run record, or None (with a warning) if it is damaged."""
    try:
        rec = json.loads(path.read_text())
        rec["result"]["status"], rec["result"]["loss"]  # noqa: B018 - the fields every reader needs
        return rec
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.warn(f"run record {path} is damaged ({type(e).__name__}); it will be redone")
        return None


class RunDir:
    """One output directory holding the runs of one or more specs."""

    def __init__(self, spec: Spec, out: Path, corpora: Path | None, pack: int):
        self.spec, self.out, self.pack = spec, Path(out), pack
        self.corpora_root = corpora
        self._corpora: Corpora | None = None
        self._done: dict[Path, bool] = {}
        self._claimed: set[str] | None = None

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

    def refresh(self) -> None:
        """Forget what was read: records may have been written by other processes."""
        self._done.clear()
        self._claimed = None

    def cell_resume_path(self, cells: list[Cell]) -> Path:
        return self.out / "resume" / f"resume-{spec_hash([c.run_id for c in cells])}.pt"

    def claimed(self) -> set[str]:
        """Runs held in the saved state of a fine-tuning/scratch group (of any
        spec in this directory): that group resumes them."""
        if self._claimed is None:
            self._claimed = {rid for s in saved_states(self.out, pretraining=False) for rid in s["runs"]}
        return self._claimed

    def to_train(self, group: list[Cell]) -> list[Cell]:
        """The runs of a group to train here: not done, and not held in another
        group's saved state. Specs that share runs (scratch runs of two
        sources) pack them differently; the group that began a shared run
        finishes it, instead of a second group training it again."""
        cells = [c for c in group if not self.done(c)]
        if not cells or self.cell_resume_path(cells).exists():
            return cells
        return [c for c in cells if c.run_id not in self.claimed()]

    def _readable(self, path: Path) -> bool:
        if path not in self._done:
            self._done[path] = path.exists() and read_record(path) is not None
        return self._done[path]

    def done(self, c: Cell) -> bool:
        return self._readable(self.run_path(c))

    def job_done(self, j: PretrainJob) -> bool:
        return self._readable(self.job_dir(j) / "result.json")

    def job_needed(self, j: PretrainJob) -> bool:
        """Not run yet, or a pending run needs one of its checkpoints and it
        is gone (checkpoints stay behind when only run records travel)."""
        if not self.job_done(j):
            return True
        return any(c.pretrain_job == j.job_id and not self.done(c)
                   and not self.ckpt_path(j.job_id, c.pretrain_tokens).exists() for c in self.spec.cells)

    def groups(self) -> tuple[list[list[PretrainJob]], list[list[Cell]]]:
        return pretrain_groups(self.spec, self.pack), cell_groups(self.spec, self.pack)

    def pending(self) -> tuple[list[list[PretrainJob]], list[list[Cell]]]:
        pgs, cgs = self.groups()
        pg = [[j for j in g if self.job_needed(j)] for g in pgs]
        cg = [[c for c in g if not self.done(c)] for g in cgs]
        return [g for g in pg if g], [g for g in cg if g]

    def validate(self) -> None:
        """Everything that can be checked before training starts: corpora
        present and large enough, and built as the finished runs' were."""
        check_sizes(self.spec, self.corpora.manifest)
        mine = corpus_hashes(self.corpora.manifest)
        for p in sorted((self.out / "runs").glob("*.json"))[:1]:
            rec = read_record(p)
            theirs = rec and rec.get("provenance", {}).get("manifest")
            if theirs:
                diff = sorted(n for n in set(mine) & set(theirs) if mine[n] != theirs[n])
                if diff:
                    raise SpecError(f"corpora {', '.join(diff)} in {self.corpora.root} differ from the build the "
                                    f"runs in {self.out} were trained on (sha256 of their splits); rebuild them "
                                    f"with `transfer-train corpora build` or use another --out")
        for j in self.spec.pretrain_jobs:
            for p in j.checkpoints:
                path = self.ckpt_path(j.job_id, p)
                if path.exists():
                    load_checkpoint(path, config_for(j.size))

    def save_spec(self) -> None:
        path = self.out / "specs" / f"{self.spec.name}.json"
        rec = dict(name=self.spec.name, text=self.spec.text, run_ids=[c.run_id for c in self.spec.cells])
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except ValueError:
                old = None
            if old == rec:
                return  # a complete grid in a read-only directory still runs
            if old and old.get("text") != rec["text"] and any(self._readable(self.out / "runs" / f"{r}.json")
                                                              for r in old.get("run_ids", [])):
                warnings.warn(f"spec {self.spec.name!r} in {self.out} was run before with other text; "
                              f"its finished runs are kept where their settings match")
        atomic_write_json(path, rec)

    def provenance(self) -> dict:
        return dict(corpora=Path(self.corpora.root).name, manifest=corpus_hashes(self.corpora.manifest),
                    code_version=code_version())

    def stream_for(self, source: str) -> Stream:
        mix = source_mix(source)
        return Stream([self.corpora.split(n, "train") for n in mix], list(mix.values()))

    def val_for(self, source: str) -> Stream:
        mix = source_mix(source)
        return Stream([self.corpora.split(n, "val") for n in mix], list(mix.values()))

    def run_pretrain_group(self, jobs: list[PretrainJob], device=None, compile=None, deadline=None,
                           log=print) -> bool:
        size = jobs[0].size
        cfg = config_for(size)
        # One init per (size, pre-training seed), whatever the source, so sources start alike.
        members = [Member(j.job_id, stable_int("init", j.seed, size), self.stream_for(j.source),
                          self.val_for(j.source), checkpoints=list(j.checkpoints)) for j in jobs]
        resume = self.job_dir(jobs[0]) / f"resume-{spec_hash([j.job_id for j in jobs])}.pt"
        by_id = {j.job_id: j for j in jobs}

        def on_ckpt(member: Member, p: int, tokens: int, state: dict) -> None:
            save_checkpoint(self.ckpt_path(member.run_id, p), cfg, state,
                            dict(job=member.run_id, source=by_id[member.run_id].source, pretrain_tokens=p,
                                 tokens_seen=tokens))

        res = train_group(cfg, members, jobs[0].settings, device=device, compile=compile, on_checkpoint=on_ckpt,
                          resume_path=resume, deadline=deadline)
        if res is None:
            return False
        prov = self.provenance()
        for j, r in zip(jobs, res):
            atomic_write_json(self.job_dir(j) / "result.json",
                              dict(job=dict(size=j.size, source=j.source, tokens=j.tokens, seed=j.seed,
                                            checkpoints=list(j.checkpoints), settings=j.settings.to_dict()),
                                   job_id=j.job_id, result=r, provenance=prov))
        resume.unlink(missing_ok=True)
        return True

    def run_cell_group(self, cells: list[Cell], device=None, compile=None, deadline=None) -> bool:
        size = cells[0].size
        cfg = config_for(size)
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
                                  eval_interval=c.settings.eval_interval))
        resume = self.cell_resume_path(cells)
        res = train_group(cfg, members, cells[0].settings, device=device, compile=compile, resume_path=resume,
                          deadline=deadline)
        if res is None:
            return False
        prov = self.provenance()
        for c, r in zip(cells, res):
            atomic_write_json(self.run_path(c), dict(cell=c.coords(), run_id=c.run_id, settings=c.settings.to_dict(),
                                                     pretrain_job=c.pretrain_job, result=r, provenance=prov,
                                                     n_params=n_params(size)))
        resume.unlink(missing_ok=True)
        return True


def saved_states(out: Path, pretraining: bool = True) -> list[dict]:
    """The groups of `out` with saved state (stopped part-way, to resume):
    their runs, step, steps in all, seconds trained so far and commit; the
    fine-tuning/scratch groups only without `pretraining`. A file that cannot
    be read is listed with its error."""
    import torch

    out = Path(out)
    paths = [*out.glob("resume/resume-*.pt"), *(out.glob("pretrain/*/resume-*.pt") if pretraining else [])]
    rows = []
    for path in sorted(paths):
        try:
            # memory-mapped: only the small metadata entry is read, not the weights
            meta = json.loads(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["meta"])
            s = meta["settings"]
            total = math.ceil(s["total_tokens"] / (s["batch"] * s["ctx"])) if s.get("total_tokens") else s["max_steps"]
            # members that already stopped (their record is written when the group ends)
            stopped = {r: rec["status"] for r, rec in zip(meta["runs"], meta.get("rec", [])) if rec.get("status")}
            rows.append(dict(path=str(path.relative_to(out)), runs=meta["runs"], step=meta["step"], steps=total,
                             wall_s=meta.get("wall_s", float("nan")), code_version=meta.get("code_version", ""),
                             stopped=stopped))
        except Exception as e:  # noqa: BLE001 - any damage: say so, the run that needs it refuses it too
            rows.append(dict(path=str(path.relative_to(out)), runs=[], error=f"{type(e).__name__}: {e}"))
    return rows


_N_CACHE: dict[str, int] = {}


def n_params(size: str) -> int:
    if size not in _N_CACHE:
        from trainer.model import EnsembleGPT

        _N_CACHE[size] = EnsembleGPT(config_for(size), [0]).n_params()
    return _N_CACHE[size]


def run_task(spec: Spec, out: Path, corpora: Path | None, pack: int, kind: str, idx: int, device, compile,
             deadline: float | None) -> tuple[bool, int]:
    """Run one group (the pending members of group idx); in a worker process
    or in-process. Returns (finished, runs finished)."""
    import torch

    if device is not None and torch.device(device).type == "cpu":
        torch.set_num_threads(1)  # one thread per process: two threads lose 2-8x when the other core is busy
    rd = RunDir(spec, out, corpora, pack)
    pgs, cgs = rd.groups()
    if kind == "pre":
        jobs = [j for j in pgs[idx] if rd.job_needed(j)]
        return rd.run_pretrain_group(jobs, device=device, compile=compile, deadline=deadline), 0
    cells = rd.to_train(cgs[idx])
    ok = rd.run_cell_group(cells, device=device, compile=compile, deadline=deadline)
    return ok, len(cells) if ok else 0


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


class DirLock:
    """An exclusive lock on an output directory (fcntl: released by the
    kernel when the holder dies, so a killed run never leaves it stale)."""

    def __init__(self, out: Path):
        self.path = Path(out) / ".lock"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.f, writable = open(self.path, "a+"), True
        except PermissionError:
            if not self.path.exists():
                raise
            self.f, writable = open(self.path), False  # a read-only grid: flock works on a read-only file
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.seek(0)
            who = self.f.read().strip() or "another process"
            self.f.close()
            raise GridLocked(f"{self.path.parent} is in use by {who}; wait for it or use another --out") from None
        if writable:
            self.f.seek(0)
            self.f.truncate()
            self.f.write(f"`grid run` pid {os.getpid()}")
            self.f.flush()
        return self

    def __exit__(self, *exc):
        self.f.close()


def _die_with_parent(parent: int) -> None:
    """A worker ends when the `grid run` that started it dies (even by
    SIGKILL), so no orphan keeps training beside a resumed run: the kernel's
    parent-death signal where Linux has it, and a watchdog thread that sees
    the worker re-parented."""
    import ctypes
    import signal
    import threading

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # the parent may have died before this worker got here
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


def free_cores() -> int:
    """Cores not busy with other work right now (at least 1)."""
    n = os.cpu_count() or 1
    return max(1, min(n, round(n - os.getloadavg()[0])))


ORDERS = ("longest", "shortest")


def order_tasks(pre: set, cells: set, cost, order: str = "longest") -> list:
    """Pre-training groups, then fine-tuning and scratch groups, each by expected FLOPs.

    "longest" first: the last group to finish is a short one, so the workers
    end close together (the shortest time to a whole grid). "shortest"
    first: the most runs finished by any given time (a grid trained over
    time-limited runs, fitted as it grows). Every group resumes, so a
    long one is worth starting even near a time limit.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    sign = -1 if order == "longest" else 1
    return (sorted([("pre", i) for i in pre], key=lambda t: sign * cost(*t))
            + sorted([("cell", i) for i in cells], key=lambda t: sign * cost(*t)))


def run_grid(spec: Spec, out: Path, corpora: Path | None = None, **kwargs) -> dict:
    """``run_grids`` for one spec: its summary."""
    return run_grids([spec], out, corpora, **kwargs)[0]


def run_grids(specs: list[Spec], out: Path, corpora: Path | None = None, time_limit: float | None = None,
              device=None, compile=None, workers: int | None = None, pack: int | None = None,
              order: str = "longest", log=print) -> list[dict]:
    """Run every pending group of ``specs`` into one output directory, `workers`
    at a time (separate processes when more than one; default: the free cores
    on a CPU, 1 on a GPU). Groups start spec by spec, each spec's in ``order``
    (``order_tasks``); a worker left idle by one spec (its last groups running,
    or waiting for checkpoints) takes the next spec's groups, so the cores stay
    busy across specs. A run or pre-training job that two specs share is trained
    once. At a time limit the groups in flight save their state and stop; the
    next call resumes them. Fine-tuning groups start once their checkpoints exist.
    Returns one summary per spec."""
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.type == "cuda"
    workers = workers if workers is not None else (1 if cuda else free_cores())
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    packs = [pack or default_pack(sp, cuda) for sp in specs]
    t0 = time.monotonic()
    deadline = t0 + time_limit if time_limit is not None else None
    for sp, pk in zip(specs, packs):
        RunDir(sp, out, corpora, pk).corpora  # missing corpora: an error before the output folder is made
    with DirLock(out):
        swept = sweep_temps(out)
        if swept:
            log(f"removed {swept} temporary file(s) left by an interrupted run")
        rds = [RunDir(sp, out, corpora, pk) for sp, pk in zip(specs, packs)]
        for rd in rds:
            rd.validate()
            rd.save_spec()
        groups = [rd.groups() for rd in rds]
        length = RunLength.calibrated(out)
        per_flop = lambda g: 1.0 / flops_per_token(g[0].size)  # noqa: E731

        def members(s: int, kind: str, i: int) -> list:
            """What task (kind, i) of spec s would train now."""
            rd, (pgs, cgs) = rds[s], groups[s]
            return [j for j in pgs[i] if rd.job_needed(j)] if kind == "pre" else rd.to_train(cgs[i])

        def key(m) -> str:
            return m.job_id if isinstance(m, PretrainJob) else m.run_id

        tasks = []  # (spec index, kind, group index), spec by spec
        for s, (rd, (pgs, cgs)) in enumerate(zip(rds, groups)):
            def cost(kind: str, i: int, s=s) -> float:  # expected FLOPs of a group's pending work
                g = members(s, kind, i)
                return pretrain_seconds(g, per_flop(g)) if kind == "pre" else group_seconds(g, per_flop(g), length)

            pend = ({i for i in range(len(pgs)) if members(s, "pre", i)},
                    {i for i in range(len(cgs)) if members(s, "cell", i)})
            tasks += [(s, *t) for t in order_tasks(*pend, cost, order)]

        def ready(task) -> bool:
            s, kind, i = task
            return kind == "pre" or all(
                c.pretrain_job is None or rds[s].done(c) or rds[s].ckpt_path(c.pretrain_job, c.pretrain_tokens).exists()
                for c in groups[s][1][i])

        pool = _InProcess() if workers == 1 else ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_die_with_parent,
            initargs=(os.getpid(),))
        finished, stopped = [0] * len(specs), False
        training: set[str] = set()  # runs and pre-training jobs in flight, so a shared one trains once
        n_total = len({key(x) for t in tasks for x in members(*t)})
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=Console(stderr=True), transient=False) as bar:
                task_bar = bar.add_task(", ".join(sp.name for sp in specs), total=n_total)
                in_flight: dict = {}
                while True:
                    while len(in_flight) < workers and not stopped:
                        if deadline is not None and time.monotonic() > deadline:
                            stopped = True
                            break
                        nxt = None
                        for t in list(tasks):
                            m = {key(x) for x in members(*t)}
                            if not m:  # trained meanwhile under another spec
                                tasks.remove(t)
                            elif ready(t) and not m & training:
                                nxt = t
                                break
                        if nxt is None:
                            break
                        tasks.remove(nxt)
                        s, kind, i = nxt
                        m = members(*nxt)
                        training |= {key(x) for x in m}
                        bar.update(task_bar, description=f"{specs[s].name}: {kind} {m[0].size} x{len(m)}")
                        in_flight[pool.submit(run_task, specs[s], out, corpora, packs[s], kind, i, dev, compile,
                                              deadline)] = (nxt, m)
                    if not in_flight:
                        break
                    done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                    for f in done:
                        (s, kind, i), m = in_flight.pop(f)
                        training -= {key(x) for x in m}
                        what = f"{specs[s].name}: " + ("pre-training" if kind == "pre" else "runs")
                        n = len(m)
                        try:
                            ok, runs = f.result()
                        except ResumeError as e:
                            # one group's saved state belongs to another commit: the rest of the grid goes on
                            log(f"{what} {m[0].size} x{n} skipped: {e}")
                            continue
                        finished[s] += runs
                        for rd in rds:
                            rd.refresh()  # records written by workers
                        if not ok:
                            log(f"{what} {m[0].size} x{n} stopped at the time limit; they resume on the next call")
                            stopped = True
                            continue
                        bar.advance(task_bar, n)
                        # one line per group as well: the bar alone shows nothing in a log file
                        log(f"{what} {m[0].size} x{n} done: "
                            f"{bar.tasks[0].completed:.0f}/{n_total}, {time.monotonic() - t0:.0f} s")
        except BaseException:
            # Interrupted (Ctrl-C, an error): do not wait for groups in flight; the
            # workers end with this process and their groups rerun on the next call.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        summaries = []
        for s, (sp, rd, (pgs, cgs)) in enumerate(zip(specs, rds, groups)):
            rd.refresh()
            if not stopped and any(t[0] == s for t in tasks):
                log(f"{sp.name}: some runs wait for pre-training checkpoints that were not made")
            held = [c for g in cgs for c in g if not rd.done(c) and c not in rd.to_train(g)]
            if held:
                log(f"{sp.name}: {len(held)} run(s) wait in the saved state of another grid's group in {out}: "
                    f"run that grid's spec to resume them")
            pg, cg = rd.pending()
            summaries.append(dict(spec=sp.name, finished_runs=finished[s], remaining_runs=sum(len(g) for g in cg),
                                  remaining_pretrain=sum(len(g) for g in pg), wall_s=round(time.monotonic() - t0, 1),
                                  complete=not pg and not cg))
    return summaries


def dry_run_estimate(spec: Spec, out: Path, cuda: bool = False, pack: int | None = None) -> dict:
    """The cost of what remains in out, probed on this machine."""
    rd = RunDir(spec, out, None, pack or default_pack(spec, cuda))
    pg, cg = rd.pending()
    cg = [g for g in map(rd.to_train, cg) if g]  # a run another group's saved state holds is priced there
    # a saved group is priced from where it stopped: its members still training have trained that
    # many tokens; those already stopped cost nothing more and are capped or not as they ended
    states = {s["path"]: s for s in saved_states(out, pretraining=False) if "step" in s}
    saved = [states.get(str(rd.cell_resume_path(g).relative_to(rd.out))) for g in cg]
    stopped = {r: status for st in saved if st for r, status in st["stopped"].items()}
    running = [[c for c in g if c.run_id not in stopped] for g in cg]
    done = [st["step"] * g[0].settings.batch * CTX if st else 0 for g, st in zip(cg, saved)]
    priced = [(g, d) for g, d in zip(running, done) if g]
    length = RunLength.calibrated(out)
    p_capped = ({c.run_id: length.p_capped(c, d) for g, d in priced for c in g}
                | {r: float(status == "capped") for r, status in stopped.items()} if length.coef is not None else {})
    return {**estimate(pg, [g for g, _ in priced], "cuda" if cuda else "cpu", length, [d for _, d in priced]),
            "run_length": length.describe(), "p_capped": p_capped, "saved": sum(st is not None for st in saved)}
