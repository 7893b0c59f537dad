"""A byte-level GPT that is natively an ensemble of M independent members.

Every weight carries a leading member dimension M (M=1 is a single model):
linears are batched matmuls and attention folds the members into the batch
of `scaled_dot_product_attention`. Packed and single runs are therefore the
same code, and per-member AdamW state and gradient clipping fall out of the
shapes. Members never interact: the loss of the ensemble is the sum of the
members' losses, so each member's gradient is its own.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

VOCAB_SIZE = 256  # bytes are tokens


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int
    d_model: int
    n_head: int
    ctx: int = 256
    vocab_size: int = VOCAB_SIZE

    def __post_init__(self):
        if self.n_layer < 1 or self.d_model < 1 or self.n_head < 1:
            raise ValueError(f"n_layer, d_model, n_head must be positive, got {self}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")

    def to_dict(self) -> dict:
        return asdict(self)


# The size ladder: (n_layer, d_model), head dim 32 up to d_model 192, 64 above,
# over 2.9 decades of non-embedding N (2.5e4 .. 1.9e7), keeping depth/width in
# the range nanoGPT-style small models use. 50k and 150k fill the CPU grids'
# range (25k .. 800k) at about even log spacing.
SIZES: dict[str, tuple[int, int]] = {
    "25k": (2, 32),
    "50k": (4, 32),
    "100k": (2, 64),
    "150k": (3, 64),
    "330k": (3, 96),
    "800k": (4, 128),
    "2m": (5, 192),
    "3m": (4, 256),
    "7m": (6, 320),
    "14m": (8, 384),
    "19m": (8, 448),
}


def config_for(size: str, ctx: int = 256) -> GPTConfig:
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; known: {', '.join(SIZES)}")
    n_layer, d_model = SIZES[size]
    head_dim = 32 if d_model <= 192 else 64
    return GPTConfig(n_layer=n_layer, d_model=d_model, n_head=d_model // head_dim, ctx=ctx)


def _linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x: (M, ..., d_in), w: (M, d_in, d_out) -> (M, ..., d_out), one bmm."""
    shape = x.shape
    y = torch.bmm(x.reshape(shape[0], -1, shape[-1]), w)
    return y.view(*shape[:-1], w.shape[-1])


def _norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """LayerNorm without bias, per-member gain w: (M, d)."""
    return F.layer_norm(x, x.shape[-1:]) * w.view(w.shape[0], *([1] * (x.dim() - 2)), -1)


class EnsembleGPT(nn.Module):
    """M members of one GPT config. Inputs are (M, B, T) byte ids."""

    def __init__(self, cfg: GPTConfig, seeds: list[int]):
        super().__init__()
        self.cfg = cfg
        M, L, d, V = len(seeds), cfg.n_layer, cfg.d_model, cfg.vocab_size
        P = lambda *s: nn.Parameter(torch.empty(M, *s))  # noqa: E731
        self.wte, self.wpe = P(V, d), P(cfg.ctx, d)
        self.ln1, self.ln2 = P(L, d), P(L, d)
        self.w_qkv, self.w_o = P(L, d, 3 * d), P(L, d, d)
        self.w_fc, self.w_proj = P(L, d, 4 * d), P(L, 4 * d, d)
        self.ln_f = P(d)
        for m, seed in enumerate(seeds):
            self.init_member(m, seed)

    @torch.no_grad()
    def init_member(self, m: int, seed: int) -> None:
        """GPT-2 init from the member's own seed, so a member's weights do not
        depend on which ensemble it is packed into."""
        g = torch.Generator().manual_seed(seed)
        resid_std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if name.startswith("ln"):
                p[m].fill_(1.0)
            else:
                std = resid_std if name in ("w_o", "w_proj") else 0.02
                p[m].copy_(torch.randn(p.shape[1:], generator=g) * std)

    @property
    def members(self) -> int:
        return self.wte.shape[0]

    def n_params(self) -> int:
        """Non-embedding parameters of one member (token and position
        embeddings excluded; the output head is tied to the token embedding)."""
        return sum(p[0].numel() for n, p in self.named_parameters() if n not in ("wte", "wpe"))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: (M, B, T) int -> logits (M, B, T, V)."""
        M, B, T = idx.shape
        cfg = self.cfg
        H, d = cfg.n_head, cfg.d_model
        members = torch.arange(M, device=idx.device).view(M, 1, 1)
        x = self.wte[members, idx] + self.wpe[:, :T].unsqueeze(1)
        for i in range(cfg.n_layer):
            h = _norm(x, self.ln1[:, i])
            q, k, v = _linear(h, self.w_qkv[:, i]).split(d, dim=-1)
            # Fold members into the batch: (M*B, H, T, hd).
            q, k, v = (t.reshape(M * B, T, H, d // H).transpose(1, 2) for t in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            a = a.transpose(1, 2).reshape(M, B, T, d)
            x = x + _linear(a, self.w_o[:, i])
            h = _norm(x, self.ln2[:, i])
            x = x + _linear(F.gelu(_linear(h, self.w_fc[:, i])), self.w_proj[:, i])
        x = _norm(x, self.ln_f)
        return _linear(x, self.wte.transpose(1, 2))

    def member_losses(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (nats per byte) of each member: (M,), in fp32."""
        logits = self(idx).float()
        M = logits.shape[0]
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1).long(), reduction="none")
        return loss.view(M, -1).mean(dim=1)

    # --- moving members in and out (checkpoints, compaction) ---
    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        return {n: p[m].detach().cpu().clone() for n, p in self.named_parameters()}

    @torch.no_grad()
    def load_member(self, m: int, state: dict[str, torch.Tensor]) -> None:
        names = dict(self.named_parameters())
        if set(state) != set(names):
            raise ValueError(f"checkpoint parameters {sorted(state)} do not match the model's {sorted(names)}")
        for n, p in names.items():
            if tuple(state[n].shape) != tuple(p.shape[1:]):
                raise ValueError(
                    f"checkpoint parameter {n} has shape {tuple(state[n].shape)}, model expects {tuple(p.shape[1:])}"
                )
            p[m].copy_(state[n])

    @torch.no_grad()
    def copy_from(self, other: "EnsembleGPT") -> None:
        for p, q in zip(self.parameters(), other.parameters()):
            p.copy_(q)

    @torch.no_grad()
    def lerp_from(self, other: "EnsembleGPT", weight: float) -> None:
        """Move these weights towards other's by `weight` (a moving-average step)."""
        for p, q in zip(self.parameters(), other.parameters()):
            p.lerp_(q.detach(), weight)

    @torch.no_grad()
    def select(self, keep: list[int]) -> None:
        """Keep only the given members (in place; parameters are replaced)."""
        idx = torch.tensor(keep, device=self.wte.device)
        for n, p in list(self.named_parameters()):
            setattr(self, n, nn.Parameter(p.index_select(0, idx).contiguous(), requires_grad=p.requires_grad))


def decay_mask(name: str) -> bool:
    """Weight decay on matrices and embeddings, not on norm gains."""
    return not name.startswith("ln")
