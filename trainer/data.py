"""Training data for runs: sources (single distributions or mixes), nested
fine-tuning subsets, and per-member batch sampling that does not depend on
which ensemble a member is packed into."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# Pre-training sources, by name: distribution -> share of sampled sequences.
# "text+code" is Hernandez et al.'s 50% text + 50% non-Python code mix, the
# code half split equally between C and Go. A run's token budget counts all
# components together, so mixes are matched in tokens to "text".
SOURCES: dict[str, dict[str, float]] = {
    "text": {"english": 1.0},
    "text+code": {"english": 0.5, "c": 0.25, "go": 0.25},
}
# Any single distribution is also a source of its own name (e.g. "python").
DISTRIBUTIONS = ("english", "python", "c", "go", "german", "maths")

# Fine-tuning subsets are built from blocks of the train split, in a
# seed-determined order, so a smaller D_F is a prefix of a larger one.
SUBSET_BLOCK = 4096


def stable_int(*parts) -> int:
    """A 63-bit integer from the text of parts (Python's hash() is salted)."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def source_mix(source: str) -> dict[str, float]:
    if source in SOURCES:
        return SOURCES[source]
    if source in DISTRIBUTIONS:
        return {source: 1.0}
    raise ValueError(f"unknown source {source!r}; known: {', '.join([*SOURCES, *DISTRIBUTIONS])}")


class Corpora:
    """Split arrays of one corpus root (dir or packed tar), loaded once each."""

    def __init__(self, root: str | Path):
        from trainer.corpora import manifest, open_split

        self.root = Path(root)
        self._open = open_split
        self.manifest = manifest(self.root)
        self._cache: dict[tuple[str, str], np.ndarray] = {}

    def names(self) -> list[str]:
        dists = self.manifest.get("distributions", self.manifest)
        return sorted(dists) if isinstance(dists, dict) else sorted(d["name"] for d in dists)

    def split(self, name: str, split: str) -> np.ndarray:
        key = (name, split)
        if key not in self._cache:
            self._cache[key] = np.asarray(self._open(self.root, name, split), dtype=np.uint8)
        return self._cache[key]

    def subset(self, name: str, data_tokens: int, seed: int) -> np.ndarray:
        """The first data_tokens bytes of the train split's blocks in the
        seed's order: nested in data_tokens, fixed by (name, seed)."""
        train = self.split(name, "train")
        if data_tokens > train.size:
            raise ValueError(f"D_F={data_tokens} exceeds the {train.size} bytes of {name}/train")
        n_blocks = -(-train.size // SUBSET_BLOCK)
        order = np.random.default_rng(stable_int("subset", name, seed)).permutation(n_blocks)
        need = -(-data_tokens // SUBSET_BLOCK)
        parts = [train[b * SUBSET_BLOCK:(b + 1) * SUBSET_BLOCK] for b in order[:need]]
        return np.concatenate(parts)[:data_tokens]


@dataclass
class Stream:
    """What one member trains on: arrays with sampling weights."""

    parts: list[np.ndarray]
    weights: list[float]


class Sampler:
    """Batches for an ensemble from one device tensor holding every member's
    data. Each member draws from its own numpy generator, so its batches are
    the same whatever else is packed beside it."""

    def __init__(self, streams: list[Stream], seeds: list[int], ctx: int, batch: int, device: torch.device):
        self.ctx, self.batch, self.device = ctx, batch, device
        arrays: list[np.ndarray] = []
        index: dict[int, int] = {}
        offset = 0
        self.offsets: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.cum: list[np.ndarray] = []
        for s in streams:
            offs, lens = [], []
            for a in s.parts:
                if a.size < ctx + 1:
                    raise ValueError(f"a data stream of {a.size} bytes is shorter than one sequence ({ctx + 1})")
                if id(a) not in index:
                    index[id(a)] = offset
                    arrays.append(a)
                    offset += a.size
                offs.append(index[id(a)])
                lens.append(a.size)
            w = np.asarray(s.weights, dtype=np.float64)
            self.offsets.append(np.asarray(offs, dtype=np.int64))
            self.lengths.append(np.asarray(lens, dtype=np.int64))
            self.cum.append(np.cumsum(w / w.sum()))
        self.data = torch.from_numpy(np.concatenate(arrays)).to(device)
        self.rngs = [np.random.default_rng(s) for s in seeds]
        self.arange = torch.arange(ctx + 1, device=device)

    def select(self, keep: list[int]) -> None:
        for name in ("offsets", "lengths", "cum", "rngs"):
            setattr(self, name, [getattr(self, name)[i] for i in keep])

    def starts(self) -> np.ndarray:
        out = np.empty((len(self.rngs), self.batch), dtype=np.int64)
        for m, rng in enumerate(self.rngs):
            comp = np.searchsorted(self.cum[m], rng.random(self.batch), side="right").clip(max=len(self.cum[m]) - 1)
            room = self.lengths[m][comp] - self.ctx
            out[m] = self.offsets[m][comp] + (rng.random(self.batch) * room).astype(np.int64)
        return out

    def gather(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.from_numpy(starts).to(self.device, non_blocking=True)
        w = self.data[s.unsqueeze(-1) + self.arange].long()
        return w[..., :-1], w[..., 1:]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gather(self.starts())

    def state(self) -> list[dict]:
        return [r.bit_generator.state for r in self.rngs]

    def set_state(self, states: list[dict]) -> None:
        for r, s in zip(self.rngs, states):
            r.bit_generator.state = s


def eval_starts(length: int, ctx: int, n: int) -> np.ndarray:
    """n evenly spaced windows over a validation array: a fixed eval set, so
    successive evaluations of a run differ only by the model."""
    if length < ctx + 1:
        raise ValueError(f"a validation split of {length} bytes is shorter than one sequence ({ctx + 1})")
    n = min(n, length - ctx)
    return np.linspace(0, length - ctx - 1, n).astype(np.int64)
