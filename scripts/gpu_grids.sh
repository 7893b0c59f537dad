#!/usr/bin/env bash
# Train the three real grids of data/ on one GPU, resumably, then export them.
#
#   bash scripts/gpu_grids.sh CORPORA [OUT_DIR] [TIME_LIMIT_S]
#
# CORPORA: a corpus root or a packed tar (`transfer-train corpora pack --max-mb 60
# corpora.tar`; a GPU machine without network gets that file copied to it).
# OUT_DIR (default runs/grids) keeps every finished run: calling the script
# again resumes where the last call stopped. At TIME_LIMIT_S seconds the
# groups in flight save their state and stop, so a call under a wall-clock
# limit ends cleanly; repeat the call until it prints "complete": true.
# Export needs h5netcdf; where it is missing (a bare GPU image) the per-run
# JSON results in OUT_DIR are exported later on any machine with the same
# command's last step.
set -euo pipefail
corpora=${1:?usage: gpu_grids.sh CORPORA [OUT_DIR] [TIME_LIMIT_S]}
out=${2:-runs/grids}
limit=${3:-}
specs=(text_to_python textcode_to_python transfer_gap)
py=${PYTHON:-python3}

args=(--out "$out" --corpora "$corpora")
[ -n "$limit" ] && args+=(--time-limit "$limit")
for s in "${specs[@]}"; do args+=("trainer/specs/$s.toml"); done
PYTHONUNBUFFERED=1 "$py" -m trainer.cli grid run "${args[@]}"
if "$py" -c "import h5netcdf" 2>/dev/null; then
    mkdir -p data/grids
    for s in "${specs[@]}"; do
        "$py" -m trainer.cli grid export "$out" --spec "$s" --out "data/grids/$s.nc"
    done
fi
