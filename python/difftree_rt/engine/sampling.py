"""The engine's one sampler: the target's choice at every tree node (ALGORITHMS.md §3).

Vocabulary: B batch, N tree nodes (root included), V vocabulary.

Every emitted token is the target's choice at some tree node: greedy -> argmax (ties to the
lowest id), sampling -> an independent draw from the processed distribution at that node
(temperature, then top-k, then top-p, transformers' order and rules). The engine draws with the
core's :func:`difftree_rt.ops.node_select` (Philox-4x32-10 keyed by ``(seed, round, node)``,
Gumbel-max; reference, C++ CPU and CUDA bit-identical): one fused op per round, per-request
``[B]`` parameters (FlashInfer's per-request array idiom), nothing read back to the host, so the
same call runs eagerly and inside a captured CUDA graph whose parameters are buffers. A draw is a
pure function of ``(seed, round, node)``: runs are reproducible, every node's draw is independent
of the tree's size, and request b of a batch draws exactly as alone with its own seed.

:func:`process_logits` / :func:`target_probs` spell the processed distribution out in plain
PyTorch (transformers' warpers): the oracle the sampling tests compare draws against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import ops

__all__ = [
    "SamplingParams",
    "SamplingSpec",
    "choose",
    "process_logits",
    "request_seeds",
    "sampling_spec",
    "target_probs",
]


@dataclass(frozen=True)
class SamplingParams:
    """How the target's choice at a node is made.

    ``temperature == 0`` is greedy (``top_k``/``top_p`` are then irrelevant). ``seed`` keys the
    counter-based generator; the decoder fills it in when the caller passes none.
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending argument."""
        t = self.temperature
        if (
            not isinstance(t, (int, float))
            or isinstance(t, bool)
            or not t >= 0.0
            or t == float("inf")
        ):
            raise ValueError(f"temperature must be a finite float >= 0, got {t!r}")
        k = self.top_k
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise ValueError(f"top_k must be None or an int >= 1, got {k!r}")
        p = self.top_p
        if p is not None and (
            not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 < p <= 1.0
        ):
            raise ValueError(f"top_p must be None or a float in (0, 1], got {p!r}")
        s = self.seed
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {s!r}")


#: Odd 64-bit step between the derived seeds of consecutive requests of a batch (2**64 / φ).
_SEED_STEP = 0x9E3779B97F4A7C15


def request_seeds(seed: int, batch_size: int) -> list[int]:
    """The per-request seeds of a batched ``generate(seed=seed)``.

    Request b draws with seed ``(seed + b * 0x9E3779B97F4A7C15) mod 2**63``: its draws are
    exactly the (round, node)-keyed draws of a solo run with that seed (request 0 keeps
    ``seed``, so a batch of one draws like the solo call).
    """
    return [(seed + b * _SEED_STEP) % 2**63 for b in range(batch_size)]


@dataclass
class SamplingSpec:
    """Per-request sampling parameters as ``[B]`` device tensors (:func:`sampling_spec`).

    Attributes:
        temperature: float32; ``0`` = greedy (argmax of the raw logits, ties to the lowest id).
        top_k: int64; ``0`` = off.
        top_p: float32; ``1`` = off.
        seed: int64 keys of the draws.
    """

    temperature: Tensor
    top_k: Tensor
    top_p: Tensor
    seed: Tensor

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.temperature, self.top_k, self.top_p, self.seed


def sampling_spec(rows: Sequence[SamplingParams], device: torch.device) -> SamplingSpec:
    """One :class:`SamplingParams` per request (each validated) -> a :class:`SamplingSpec`."""
    for r in rows:
        r.validate()
    temps = [float(r.temperature) if not r.greedy else 0.0 for r in rows]
    top_k = [int(r.top_k) if r.top_k is not None else 0 for r in rows]
    top_p = [float(r.top_p) if r.top_p is not None else 1.0 for r in rows]
    return SamplingSpec(
        torch.tensor(temps, dtype=torch.float32, device=device),
        torch.tensor(top_k, dtype=torch.int64, device=device),
        torch.tensor(top_p, dtype=torch.float32, device=device),
        torch.tensor([r.seed for r in rows], dtype=torch.int64, device=device),
    )


def choose(logits: Tensor, spec: SamplingSpec, round_idx: Tensor) -> Tensor:
    """The target's choice at every node: ``logits [B, N, V]`` -> int64 token ids ``[B, N]``.

    Node n of request b is keyed by ``(spec.seed[b], round_idx[b], n)`` (``round_idx`` a
    ``[B]`` int64 device tensor; the prefill's first token is round 0). Padding nodes draw
    tokens the walk never reads.
    """
    return ops.node_select(logits.contiguous(), *spec.tensors(), round_idx).to(torch.int64)


def process_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """Temperature -> top-k -> top-p on ``[..., V]`` logits, as transformers' warpers do (fp32).

    Removed tokens get ``-inf``. top-k keeps every token tied with the k-th largest value;
    top-p keeps the smallest set of most likely tokens whose mass reaches ``top_p`` (at least
    one).
    """
    x = logits.to(torch.float32)
    if not params.greedy:
        x = x / torch.tensor(params.temperature, dtype=torch.float32)
    v = x.shape[-1]
    if params.top_k is not None and params.top_k < v:
        kth = torch.topk(x, params.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1.0:
        # transformers' TopPLogitsWarper: sort ascending, drop the prefix whose cumulative mass
        # is <= 1 - top_p, always keep the most likely token.
        sorted_x, order = torch.sort(x, dim=-1, descending=False)
        cum = sorted_x.softmax(dim=-1).cumsum(dim=-1)
        drop = cum <= 1.0 - params.top_p
        drop[..., -1] = False
        x = x.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return x


def target_probs(logits: Tensor, params: SamplingParams) -> Tensor:
    """The processed target distribution ``[..., V]`` (fp32; one-hot argmax when greedy)."""
    if params.greedy:
        idx = logits.argmax(dim=-1, keepdim=True)
        return torch.zeros_like(logits, dtype=torch.float32).scatter_(-1, idx, 1.0)
    return process_logits(logits, params).softmax(dim=-1)
