"""Fine-tuning learning rate and warm-up, measured: for a few (size, D_F)
cells, fine-tune from a grid's pre-training checkpoints at multiples of the
size's table learning rate (trainer/train.py: LR_TABLE) and at two warm-ups,
with the grid's own measurement (early stopping, weight average, report
windows), and print the reported loss of each as a Markdown table.

    python benchmarks/finetune_lr_sweep.py RUN_DIR SPEC [--sizes 25k,100k] [--data 8192,65536]

RUN_DIR is a grid output directory whose SPEC has finished pre-training
(the sweep reads its checkpoints); each run takes one core.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import torch

from trainer.data import Stream, stable_int
from trainer.model import config_for
from trainer.plan import default_pack
from trainer.scheduler import RunDir
from trainer.spec import cell_settings, load_spec
from trainer.train import LR_TABLE, Member, load_checkpoint, train_group


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("spec", type=Path)
    ap.add_argument("--corpora", type=Path, default=None)
    ap.add_argument("--sizes", default="25k,100k")
    ap.add_argument("--data", default="8192,65536")
    ap.add_argument("--scales", default="0.5,1,2", help="multiples of the table learning rate")
    ap.add_argument("--warmups", default="100,25", help="warm-up steps (the first is the default)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    sp = load_spec(a.spec)
    rd = RunDir(sp, a.run_dir, a.corpora, default_pack(sp, False))
    scales = [float(x) for x in a.scales.split(",")]
    warmups = [int(x) for x in a.warmups.split(",")]
    print(f"Machine: {platform.processor() or platform.machine()}, one thread per run; spec {sp.name}, seed {a.seed}.")
    print("\n| size | D_F | lr (x table) | warm-up | reported loss | selection loss | best step | steps | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in a.sizes.split(","):
        job = next(j for j in sp.pretrain_jobs if j.size == size and j.seed == sp.pretrain["seeds"][0])
        p = max(c.pretrain_tokens for c in sp.cells if c.pretrain_job == job.job_id)
        init = load_checkpoint(rd.ckpt_path(job.job_id, p), config_for(size))
        for D in (int(x) for x in a.data.split(",")):
            base = cell_settings(sp.train, size, D)
            combos = [(s, warmups[0]) for s in scales] + [(1.0, w) for w in warmups[1:]]
            for scale, warm in combos:
                st = dataclasses.replace(base, lr=LR_TABLE[size] * scale, warmup=warm)
                target = sp.targets[0]
                m = Member(f"sweep.{size}.{D}", stable_int("run", a.seed, size, target),
                           Stream([rd.corpora.subset(target, D, a.seed)], [1.0]), rd.val_for(target),
                           init=init, data_tokens=D)
                t0 = time.time()
                r = train_group(config_for(size), [m], st, device=torch.device("cpu"))[0]
                print(f"| {size} | {D} | {scale:g} | {warm} | {r['loss']:.4f} | {r['loss_select']:.4f} | "
                      f"{r['best_step']} | {r['steps']} | {time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
