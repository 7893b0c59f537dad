"""The loss-grid contract: what the trainer writes and the analysis reads.

One place for the names, dimensions, units, status values and attributes of
the loss-grid netCDF (and of the plain tables that stand for it), and for
the candidates table that prices the runs a grid could add. Both halves of
the project import these names; neither writes them by hand. Standard
library only, so either half can import it without the other's
dependencies. The contract is described for people in docs/loss_grid.md.
"""

from __future__ import annotations

# ------------------------------------------------------------------ dimensions
RUN = "run"  # one entry per trained run; its coordinate is the run's label (id)
EVAL = "eval"  # one entry per evaluation along a run's learning curve
GRID_RUN = "grid_run"  # the run dimension when a fit file carries its grid

# ------------------------------------------------------------------ per-run coordinates (dims: run)
TARGET = "target"  # corpus (or task) fine-tuned on and evaluated on
SOURCE = "source"  # corpus (or mix) pre-trained on; SCRATCH for none
N_PARAMS = "n_params"  # parameters of the model
PRETRAIN_TOKENS = "pretrain_tokens"  # source data seen in pre-training (DATA_UNIT); 0 for scratch
DATA_TOKENS = "data_tokens"  # target data trained on (DATA_UNIT); the fine-tuning amount D_F
SEED = "seed"  # integer seed of the run (of its data subset and initialisation)
PRETRAIN_RUN = "pretrain_run"  # trainer grids only: id of the pre-training run a run starts from ("" for scratch)
N_LAYER = "n_layer"  # trainer grids only: the architecture behind n_params
D_MODEL = "d_model"

# ------------------------------------------------------------------ per-run data (dims: run)
LOSS = "loss"  # the run's best validation loss on the target (LOSS_UNITS, METRIC)
LOSS_SELECT = "loss_select"  # trainer grids only: the loss on the windows that chose the best point
BEST_STEP = "best_step"  # optimiser step at which LOSS was reached
STATUS = "status"  # one of STATUSES
STATUS_REASON = "status_reason"  # why, when STATUS is not OK ("" otherwise)
TOKENS_SEEN = "tokens_seen"  # target data consumed, repeats counted

# ------------------------------------------------------------------ learning curves (dims: run, eval)
CURVE_TOKENS = "curve_tokens"  # target data consumed at each evaluation
CURVE_LOSS = "curve_loss"  # validation loss at each evaluation
TRAIN_LOSS = "train_loss"  # training loss at each evaluation
CURVES = (CURVE_TOKENS, CURVE_LOSS, TRAIN_LOSS)
LOSS_CURVES = (CURVE_LOSS, TRAIN_LOSS)  # the curves in loss units (converted with LOSS)

# The columns a run needs, and the subset that identifies it: two runs that
# agree on all of CELL are duplicates.
REQUIRED = (N_PARAMS, DATA_TOKENS, LOSS)
CELL = (TARGET, SOURCE, N_PARAMS, DATA_TOKENS, PRETRAIN_TOKENS, SEED)
NUMERIC = (N_PARAMS, DATA_TOKENS, PRETRAIN_TOKENS, LOSS, SEED)
# What the trainer's export writes (a table from elsewhere needs only REQUIRED)
COORDS = (TARGET, SOURCE, N_PARAMS, N_LAYER, D_MODEL, PRETRAIN_TOKENS, DATA_TOKENS, SEED, PRETRAIN_RUN)
DATA_VARS = (LOSS, LOSS_SELECT, BEST_STEP, *CURVES, STATUS, STATUS_REASON, TOKENS_SEEN)

# ------------------------------------------------------------------ status values
OK = "ok"  # early-stopped normally: LOSS is the data-limited optimum
CAPPED = "capped"  # hit the step cap first: LOSS may overstate the optimum
FAILED = "failed"  # diverged or errored: LOSS is not usable
STATUSES = (OK, CAPPED, FAILED)

# ------------------------------------------------------------------ the scratch source
SCRATCH = "none"  # SOURCE of a run trained from random initialisation

# ------------------------------------------------------------------ attributes (dataset-level)
ATTR_LOSS_UNITS = "loss_units"  # one of LOSS_UNITS
ATTR_METRIC = "metric"  # one of METRICS; absent means CROSS_ENTROPY
ATTR_DATA_UNIT = "data_unit"  # what DATA_TOKENS/PRETRAIN_TOKENS count: one of DATA_UNITS; absent means TOKENS
ATTR_TOKEN = "token"  # what one token is: "byte" for the trainer's grids, else e.g. "gpt2-bpe"
ATTR_VOCAB_SIZE = "vocab_size"  # tokens in the vocabulary; a uniform guess costs ln(vocab_size) nats
# provenance, written by the trainer's export
ATTR_CORPUS_NAMES = "corpus_names"  # JSON list
ATTR_CORPUS_MANIFEST = "corpus_manifest"  # JSON object: the corpus build the runs were trained on
ATTR_CODE_VERSION = "code_version"  # commits the runs were trained with, comma-separated
ATTR_EXPORT_CODE_VERSION = "export_code_version"  # commit of the exporter
ATTR_HARDWARE = "hardware"
ATTR_WALL_TIME_S = "wall_time_s"
ATTR_CORE_HOURS = "core_hours"  # compute of the runs and their pre-training (one thread per process on a CPU)
ATTR_SPEC = "spec"  # the grid spec's TOML text
ATTR_SPEC_NAME = "spec_name"
ATTR_PRETRAIN = "pretrain"  # JSON object: the pre-training runs the fine-tuned runs start from
ATTR_RUNS_EXPECTED = "runs_expected"
ATTR_SOURCE_FILE = "source_file"  # set by the loader for a table read from a file
ATTR_NOTES = "notes"  # set by the loader: what it changed (e.g. bits converted to nats)

# ------------------------------------------------------------------ units and metrics
NATS = "nats"
BITS = "bits"
FRACTION = "fraction"  # an error rate in [0, 1]
PERCENT = "percent"  # an error rate in [0, 100]
LOSS_UNITS = (NATS, BITS, FRACTION, PERCENT)

CROSS_ENTROPY = "cross_entropy"  # per-token cross-entropy: NATS or BITS
ERROR_RATE = "error_rate"  # fraction of test examples wrong: FRACTION or PERCENT
METRICS = (CROSS_ENTROPY, ERROR_RATE)
UNITS_OF_METRIC = {CROSS_ENTROPY: (NATS, BITS), ERROR_RATE: (FRACTION, PERCENT)}
# The unit each metric is held in once loaded (others are converted to it).
CANONICAL_UNITS = {CROSS_ENTROPY: NATS, ERROR_RATE: FRACTION}

TOKENS = "tokens"
EXAMPLES = "examples"
IMAGES = "images"
DATA_UNITS = (TOKENS, EXAMPLES, IMAGES)

BYTE = "byte"  # ATTR_TOKEN of the trainer's grids (vocab_size 256)

# ------------------------------------------------------------------ candidates table
# Written by `transfer-train grid price`: one row per run a grid could add,
# with what it would cost. Same meaning and units as the loss grid's columns.
SIZE = "size"  # the trainer's name for the architecture (e.g. "100k")
COST_CORE_HOURS = "cost_core_hours"  # estimated accelerator (or CPU core) hours
COST_FLOPS = "cost_flops"  # estimated training FLOPs, pre-training share included
PRETRAIN_SEED = "pretrain_seed"  # the seed of the pre-training run a candidate starts from (-1 for scratch)
CANDIDATE_COLUMNS = (SIZE, N_PARAMS, DATA_TOKENS, SOURCE, TARGET, PRETRAIN_TOKENS, SEED, PRETRAIN_SEED,
                     COST_CORE_HOURS, COST_FLOPS)

# ------------------------------------------------------------------ pair labels
PAIR_SEP = "->"


def pair_label(source: str, target: str) -> str:
    """The label of a transfer pair, e.g. ``pair_label("text", "python") == "text->python"``."""
    for name, value in (("source", source), ("target", target)):
        if not isinstance(value, str) or not value or PAIR_SEP in value:
            raise ValueError(f"pair {name} must be a non-empty string without {PAIR_SEP!r}; got {value!r}")
    return f"{source}{PAIR_SEP}{target}"


def split_pair(label: str) -> tuple[str, str]:
    """``(source, target)`` of a pair label; the inverse of ``pair_label``."""
    parts = label.split(PAIR_SEP) if isinstance(label, str) else []
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"not a pair label {label!r}: expected 'source{PAIR_SEP}target'")
    return parts[0], parts[1]


__all__ = [name for name in dir() if name.isupper()] + ["pair_label", "split_pair"]
