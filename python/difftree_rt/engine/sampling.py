"""The processed target distribution and reproducible per-node draws (ALGORITHMS.md §3).

Vocabulary: B batch, N tree nodes (root included), V vocabulary.

Every emitted token is the target's choice at some tree node: greedy -> argmax (ties to the
lowest id), sampling -> an independent draw from the processed distribution at that node
(temperature, then top-k, then top-p, in transformers' order). A draw is a pure function of
``(seed, round, node)`` through a counter-based hash, so a run is reproducible, every node's
draw is independent of how many other nodes the tree has, and the round counter can live in
device memory (graph-friendly: nothing here reads a value back to the host).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "RequestSettings",
    "SamplingParams",
    "choose_tokens",
    "counter_uniform",
    "process_logits",
    "request_seeds",
    "request_settings",
    "sampling_kwargs",
    "sampling_values",
    "target_probs",
]

_MASK32 = 0xFFFFFFFF
# Odd 32-bit multipliers of the "lowbias32" integer hash (C. Wellons).
_MUL_A = 0x7FEB352D
_MUL_B = 0x846CA68B
_GOLDEN = 0x9E3779B9


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


# ---------------------------------------------------------------------------------------------
# Counter-based uniforms
# ---------------------------------------------------------------------------------------------
def _mul32(x: Tensor, c: int) -> Tensor:
    """``(x * c) mod 2**32`` for int64 ``x`` in [0, 2**32) without int64 overflow.

    Split x into 16-bit halves so every partial product stays below 2**48.
    """
    lo = (x & 0xFFFF) * c
    hi = ((x >> 16) * (c & 0xFFFF)) << 16
    return (lo + hi) & _MASK32


def _hash32(x: Tensor) -> Tensor:
    """lowbias32: a bijective 32-bit mixer with good avalanche, on int64 holding u32 values."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, _MUL_A)
    x = x ^ (x >> 15)
    x = _mul32(x, _MUL_B)
    return x ^ (x >> 16)


def counter_uniform(seed: int | Tensor, round_idx: int | Tensor, node: Tensor) -> Tensor:
    """Uniform float64 in [0, 1) per element of ``node``, a pure function of (seed, round, node).

    Args:
        seed: int or int64 tensor broadcastable to ``node`` (64-bit; both halves are mixed in).
        round_idx: int or int64 tensor broadcastable to ``node``.
        node: int64 tensor of node ids (any shape, e.g. ``[B, N]``).

    Returns:
        float64 tensor shaped like ``node`` with 53 random bits per value.
    """
    dev = node.device
    seed_t = torch.as_tensor(seed, dtype=torch.int64, device=dev)
    round_t = torch.as_tensor(round_idx, dtype=torch.int64, device=dev)
    node = node.to(torch.int64)
    seed_lo = seed_t & _MASK32
    seed_hi = (seed_t >> 32) & _MASK32
    # Chain the counter words through the mixer (a sponge over 32-bit words): distinct
    # (seed, round, node) give unrelated streams.
    h = _hash32(seed_lo ^ _GOLDEN)
    h = _hash32(h ^ seed_hi)
    h = _hash32(h ^ (round_t & _MASK32))
    h = _hash32(h ^ (node & _MASK32))
    w1 = _hash32(h ^ 0x1)
    w2 = _hash32(h ^ 0x2)
    # 26 + 27 bits -> a double in [0, 1) with 53-bit resolution.
    bits = ((w1 >> 6) << 27) | (w2 >> 5)
    return bits.to(torch.float64) * (1.0 / 2.0**53)


#: Odd 64-bit step between the derived seeds of consecutive requests of a batch (2**64 / φ).
_SEED_STEP = 0x9E3779B97F4A7C15


def request_seeds(seed: int, batch_size: int) -> list[int]:
    """The per-request seeds of a batched ``generate(seed=seed)``.

    Request b draws with seed ``(seed + b * 0x9E3779B97F4A7C15) mod 2**63``: its draws are
    exactly the (round, node)-keyed draws of a solo run with that seed (request 0 keeps
    ``seed``, so a batch of one draws like the solo call). Distinct requests get unrelated
    streams (the seed's both 32-bit halves go through the hash).
    """
    return [(seed + b * _SEED_STEP) % 2**63 for b in range(batch_size)]


# ---------------------------------------------------------------------------------------------
# Processed distribution
# ---------------------------------------------------------------------------------------------
def sampling_values(params: SamplingParams) -> tuple[float, float]:
    """The two continuous sampling values as the fp32 kernels use them: ``(temperature,
    1 - top_p)`` (the top-p drop threshold; 0.0 when top-p is off). Graph mode keeps them in
    device buffers, so one captured graph serves every temperature and top-p."""
    temp = params.temperature if params.temperature > 0.0 else 1.0
    top_p = params.top_p if params.top_p is not None else 1.0
    return float(temp), 1.0 - float(top_p)


@functools.lru_cache(maxsize=64)
def _values_tensor(temperature: float, drop: float, device: str) -> Tensor:
    """``sampling_values`` as a float32 tensor on ``device``, built once per value pair (the
    eager loops would otherwise copy two floats to the device every round). Never written; a
    normal tensor even when first built under ``inference_mode`` (autograd may save it)."""
    with torch.inference_mode(False):
        return torch.tensor([temperature, drop], dtype=torch.float32, device=device)


def uses_top_p(params: SamplingParams) -> bool:
    """Whether top-p filtering runs (part of a captured graph's structure)."""
    return params.top_p is not None and params.top_p < 1.0


def process_logits(logits: Tensor, params: SamplingParams, values: Tensor | None = None) -> Tensor:
    """Temperature -> top-k -> top-p on ``[..., V]`` logits, as transformers' warpers do.

    Removed tokens get ``-inf``. top-k keeps every token tied with the k-th largest value;
    top-p keeps the smallest set of most likely tokens whose mass reaches ``top_p`` (at least
    one). Computed in fp32.

    ``values``: optional float32 device tensor ``[..., 2]`` (broadcastable against the logits'
    leading dims) holding :func:`sampling_values` — graph mode's buffers; None builds it from
    ``params``. Either way the division and the comparison take a float32 *tensor* operand
    (CUDA divides by a host scalar through its reciprocal), so eager and graph mode compute
    the same bits. ``params.top_k`` and whether top-p runs are structure (host values).
    """
    x = logits.to(torch.float32)
    if values is None:
        values = _values_tensor(*sampling_values(params), str(x.device))
    values = values.to(torch.float32)
    while values.dim() < x.dim():
        values = values.unsqueeze(-2)
    x = x / values[..., 0:1]
    v = x.shape[-1]
    if params.top_k is not None and params.top_k < v:
        kth = torch.topk(x, params.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if uses_top_p(params):
        # Same rule as transformers' TopPLogitsWarper: sort ascending, drop the prefix whose
        # cumulative mass is <= 1 - top_p, always keep the most likely token.
        sorted_x, order = torch.sort(x, dim=-1, descending=False)
        cum = sorted_x.softmax(dim=-1).cumsum(dim=-1)
        drop = cum <= values[..., 1:2]
        drop[..., -1] = False
        x = x.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return x


def target_probs(logits: Tensor, params: SamplingParams) -> Tensor:
    """The processed target distribution ``[..., V]`` (fp32; one-hot argmax when greedy)."""
    if params.greedy:
        idx = logits.argmax(dim=-1, keepdim=True)
        return torch.zeros_like(logits, dtype=torch.float32).scatter_(-1, idx, 1.0)
    return process_logits(logits, params).softmax(dim=-1)


@dataclass
class RequestSettings:
    """Per-request settings of a batch (device tensors; graph mode copies them into buffers).

    Attributes:
        seed: ``[B, 1]`` int64 seeds.
        values: ``[B, 2]`` float32 :func:`sampling_values` (temperature, ``1 - top_p``).
        greedy: ``[B]`` bool rows that take the argmax inside a sampled batch; None when all
            rows are alike (the batch's :class:`SamplingParams` decides).
        max_new: ``[B]`` int64 per-request ``max_new_tokens``.
    """

    seed: Tensor
    values: Tensor
    greedy: Tensor | None = None
    max_new: Tensor | None = None  # [B] int64 max_new_tokens per request (None: the call's)
    caps: list[int] | None = None  # the same on the host


def request_settings(
    temperatures: list[float],
    top_k: int | None,
    top_ps: list[float | None],
    seeds: list[int],
    device: torch.device,
    max_new: list[int] | None = None,
) -> tuple[SamplingParams, RequestSettings]:
    """A batch's sampling: the shared structure (greedy or not, top-k, whether top-p runs) as
    one :class:`SamplingParams`, and each request's values. Every request is validated; a
    request draws exactly as its solo run with its own temperature, top-p and seed (no top-p
    inside a top-p batch is threshold 0, which drops only zero-mass tokens: the same bits)."""
    rows = [
        SamplingParams(temperature=t, top_k=top_k, top_p=p, seed=s)
        for t, p, s in zip(temperatures, top_ps, seeds, strict=True)
    ]
    for r in rows:
        r.validate()
    sampled = [r for r in rows if not r.greedy]
    filtered = [r.top_p for r in sampled if uses_top_p(r)]
    shared = SamplingParams(
        temperature=sampled[0].temperature if sampled else 0.0,
        top_k=top_k,
        top_p=min(filtered) if filtered else None,  # any value < 1: top-p runs
        seed=seeds[0],
    )
    values = torch.tensor([sampling_values(r) for r in rows], dtype=torch.float32, device=device)
    greedy = None
    if sampled and len(sampled) < len(rows):
        greedy = torch.tensor([r.greedy for r in rows], dtype=torch.bool, device=device)
    seed = torch.tensor(seeds, dtype=torch.int64, device=device)[:, None]
    caps = None if max_new is None else torch.tensor(max_new, dtype=torch.int64, device=device)
    return shared, RequestSettings(seed, values, greedy, caps, None if max_new is None else max_new)


def sampling_kwargs(req: RequestSettings) -> dict[str, Tensor | None]:
    """``choose_tokens`` keyword arguments of a batch's per-request sampling."""
    return {"seed": req.seed, "values": req.values, "greedy": req.greedy}


def choose_tokens(
    logits: Tensor,
    params: SamplingParams,
    round_idx: int | Tensor,
    node_offset: int = 0,
    seed: int | Tensor | None = None,
    values: Tensor | None = None,
    greedy: Tensor | None = None,
) -> Tensor:
    """The target's choice at every node: ``logits [B, N, V]`` -> token ids int64 ``[B, N]``.

    Greedy: argmax, ties to the lowest id (``torch.argmax`` returns the first maximum).
    Sampling: inverse-CDF draw from the processed distribution with the uniform of
    ``(seed, round_idx, node_offset + n)`` for node n, so nodes draw independently and the
    same (seed, round, node) always draws the same token for the same distribution.
    Padding nodes draw garbage that the walk never reads. ``seed`` (an int64 device tensor
    in graph mode, so a captured graph replays with a new seed) overrides ``params.seed``; an
    int64 ``[B, 1]`` tensor gives every request its own seed (batched generation).
    ``values``: per-request (``[B, 2]``) or graph-mode device :func:`sampling_values` (see
    :func:`process_logits`). ``greedy``: ``[B]`` bool rows that take the argmax instead (a
    batch mixing greedy and sampled requests).
    """
    if params.greedy:
        return logits.argmax(dim=-1)
    if greedy is not None:
        sampled = choose_tokens(logits, params, round_idx, node_offset, seed, values)
        return torch.where(greedy[:, None], logits.argmax(dim=-1), sampled)
    probs = process_logits(logits, params, values).softmax(dim=-1).to(torch.float64)
    num_b, num_n, _ = probs.shape
    node = torch.arange(node_offset, node_offset + num_n, device=logits.device)
    key = params.seed if seed is None else seed
    u = counter_uniform(key, round_idx, node[None]).expand(num_b, num_n)
    cdf = probs.cumsum(dim=-1)
    # Scale by the total so fp rounding of the cumulative sum cannot push u past the end;
    # `right=True` returns the first token whose cdf exceeds the draw, which has mass > 0.
    total = cdf[..., -1]
    # x < total strictly, so the first cdf entry above x exists and belongs to a token with
    # positive mass (zero-mass tokens repeat the previous cdf value).
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total))).contiguous()
    return torch.searchsorted(cdf.contiguous(), x[..., None], right=True)[..., 0]
