"""The same grid spec through submitit: on a SLURM cluster (one array task per
chunk of groups), as local subprocesses, or in-process for debugging.

Tasks write the same per-run result files as `grid run`, so a grid can be
started on one executor and finished on another, and a re-submission only
trains what is missing. Pre-training groups run first (one array), the
fine-tuning and scratch groups after them (a second array).
"""
from __future__ import annotations

import time
from pathlib import Path

from trainer.plan import default_pack
from trainer.scheduler import RunDir, run_task
from trainer.spec import Spec

EXECUTORS = {"slurm": "slurm", "local": "local", "inprocess": "debug"}


def run_chunk(spec: Spec, out: Path, corpora: Path | None, pack: int, tasks: list[tuple[str, int]],
              device=None) -> int:
    """One array task: run its groups in order; returns runs finished."""
    return sum(run_task(spec, out, corpora, pack, kind, idx, device, None, None)[1] for kind, idx in tasks)


def _chunks(tasks: list, size: int) -> list[list]:
    return [tasks[i:i + size] for i in range(0, len(tasks), size)]


def submit_grid(spec: Spec, out: Path, corpora: Path | None = None, executor: str = "slurm", chunk: int = 4,
                partition: str | None = None, timeout_min: int = 60, gpus_per_node: int = 0,
                folder: Path | None = None, device=None, log=print) -> dict:
    """Submit the pending groups of a grid, wait for them, return a summary."""
    import submitit

    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    t0 = time.monotonic()
    out = Path(out).resolve()
    corpora = Path(corpora).resolve() if corpora is not None else None
    pack = default_pack(spec, gpus_per_node > 0)
    grid = RunDir(spec, out, corpora, pack)
    grid.validate()
    grid.save_spec()
    ex = submitit.AutoExecutor(folder=str(folder or out / "submitit" / "%j"), cluster=EXECUTORS[executor])
    params = dict(timeout_min=timeout_min, name=f"grid-{spec.name}", gpus_per_node=gpus_per_node)
    if partition:
        params["slurm_partition"] = partition
    ex.update_parameters(**params)

    pgs, cgs = grid.groups()
    pre = [("pre", i) for i, g in enumerate(pgs) if any(grid.job_needed(j) for j in g)]
    cells = [("cell", i) for i, g in enumerate(cgs) if any(not grid.done(c) for c in g)]
    finished = 0
    for name, tasks in (("pre-training", pre), ("runs", cells)):
        if not tasks:
            continue
        chunks = _chunks(tasks, chunk)
        n = len(chunks)
        jobs = ex.map_array(run_chunk, [spec] * n, [out] * n, [corpora] * n, [pack] * n, chunks, [device] * n)
        log(f"{name}: {len(tasks)} groups in {n} array tasks ({jobs[0].job_id.split('_')[0]})")
        finished += sum(j.result() for j in jobs)
        grid.refresh()
    pg, cg = grid.pending()
    return dict(spec=spec.name, executor=executor, finished_runs=finished, remaining_runs=sum(len(g) for g in cg),
                remaining_pretrain=sum(len(g) for g in pg), wall_s=round(time.monotonic() - t0, 1),
                complete=not pg and not cg)
