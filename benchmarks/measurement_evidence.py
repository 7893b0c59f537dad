"""How clean is a grid's loss? For each cell (size, D_F, scratch or
fine-tuned) of one or more grid output directories: the reported loss over
seeds (mean and seed-to-seed standard deviation), the step of the best
point, runs whose best is their first evaluation after step 0, and capped
runs. Prints one Markdown table per directory.

    python benchmarks/measurement_evidence.py LABEL=RUN_DIR [LABEL=RUN_DIR ...]

Used for the before/after comparison in trainer/BENCH.md (two directories
trained from the same cells by two versions of the trainer).
"""
from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def first_eval_after_zero(r: dict) -> int:
    """The step of a run's first evaluation after step 0 (the curve of an
    older trainer has no step-0 point)."""
    toks = r["curve_tokens"]
    per_step = r["batch"] * 256
    steps = [t // per_step for t in toks if t > 0]
    return steps[0] if steps else 0


def table(run_dir: Path) -> list[str]:
    cells = defaultdict(list)
    for p in sorted((run_dir / "runs").glob("*.json")):
        rec = json.loads(p.read_text())
        c = rec["cell"]
        kind = "scratch" if c["source"] == "none" else "fine-tuned"
        cells[(rec["n_params"], c["size"], c["data_tokens"], kind)].append(rec["result"])
    rows = ["| size | D_F | kind | seeds | loss (mean) | seed sd | best step | best = first eval | capped |",
            "|---|---|---|---|---|---|---|---|---|"]
    for (_, size, d, kind), rs in sorted(cells.items()):
        losses = [r["loss"] for r in rs]
        sd = statistics.stdev(losses) if len(losses) > 1 else float("nan")
        first = sum(r["best_step"] == first_eval_after_zero(r) for r in rs)
        capped = sum(r["status"] == "capped" for r in rs)
        rows.append(f"| {size} | {d // 1024} KiB | {kind} | {len(rs)} | {statistics.mean(losses):.4f} | {sd:.4f} | "
                    f"{', '.join(str(r['best_step']) for r in rs)} | {first}/{len(rs)} | {capped}/{len(rs)} |")
    return rows


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        label, _, path = arg.partition("=")
        print(f"\n### {label}\n")
        print("\n".join(table(Path(path))))


if __name__ == "__main__":
    main()
