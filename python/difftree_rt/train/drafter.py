"""DFlash drafter training for any HF causal-LM target (ALGORITHMS.md §1, training).

Vocabulary: B batch (sequences), T sequence length, m anchors (blocks) per sequence,
S block size, L = S - 1 draft depth, V vocabulary, F feature width (k target layers x hidden).

One step:

1. Draw B sequences [B, T] (random corpus windows or target-generated continuations).
2. Run the frozen target once (no grad) and take the features of ``target_layer_ids`` [B, T, F].
3. Draw m distinct anchors per sequence, ``a in [1, T - S]``. Block j of a sequence is
   ``[x[a_j], MASK x (S - 1)]`` at positions ``a_j .. a_j + S - 1`` -- or, with variable-prefix
   training (D²SD), ``[x[a_j], x[a_j + 1 .. a_j + p_j], MASK x (S - 1 - p_j)]``.
4. One stateless drafter pass over all m blocks at once, [B, m * S] query rows, with the mask of
   :func:`block_attention_mask`: a block row sees context rows ``t < a_j`` (target features
   strictly before its anchor), every row of its own block, and nothing of other blocks.
5. Loss: cross-entropy at slots k = 1..S-1 against ``x[a_j + k]``, weighted
   ``exp(-(k - 1 - p_j) / γ)`` for k > p_j (0 for prefix slots), normalised per block; mean
   over blocks. γ = 7 for S = 16 (scaled as ``7 (S - 1) / 15`` for other block sizes).

The target (embedding and LM head included) is frozen; only drafter parameters train.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from difftree_rt.models import DFlashDrafter
from difftree_rt.models.dflash import extract_features

from .checkpoint import load_checkpoint, save_checkpoint
from .corpus import TokenStream
from .lm import cosine_lr

__all__ = [
    "DrafterTrainConfig",
    "DrafterTrainResult",
    "SequenceSource",
    "block_attention_mask",
    "build_blocks",
    "default_gamma",
    "drafter_loss",
    "generate_continuations",
    "sample_anchors",
    "sample_prefix_lengths",
    "slot_weights",
    "train_drafter",
]


@dataclass
class DrafterTrainConfig:
    """Drafter architecture and optimisation settings.

    ``prefix_geom`` enables variable-prefix training (D²SD): each block gets a visible prefix
    of p true tokens with ``P(p = i) ∝ (1 - prefix_geom)^i`` for i = 0..S-2 (truncated
    geometric); None trains the plain DFlash drafter (p = 0).
    """

    steps: int = 1000
    batch_size: int = 8
    context: int = 256
    anchors: int = 16
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    block_size: int = 16
    gamma: float | None = None
    num_layers: int = 1
    num_feature_layers: int | None = None
    target_layer_ids: list[int] | None = None
    intermediate_size: int | None = None
    mask_token_id: int | None = None
    prefix_geom: float | None = None
    seed: int = 0
    log_every: int = 25
    ckpt_every: int = 100
    autocast: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DrafterTrainResult:
    drafter: DFlashDrafter
    step: int
    finished: bool
    log: list[dict[str, Any]]


def default_gamma(block_size: int) -> float:
    """γ of the loss decay: 7 for S = 16, scaled with the depth otherwise."""
    return 7.0 * (block_size - 1) / 15.0


# ---------------------------------------------------------------------------------------------
# Blocks, mask, weights
# ---------------------------------------------------------------------------------------------
def sample_anchors(
    batch: int, seq_len: int, block_size: int, num: int, generator: torch.Generator
) -> torch.Tensor:
    """Distinct sorted anchors [B, m] in ``[1, T - S]`` (every label ``a + S - 1`` exists)."""
    hi = seq_len - block_size  # inclusive upper bound
    if hi < 1:
        raise ValueError(f"sequence length {seq_len} too short for block size {block_size}")
    num = min(num, hi)
    keys = torch.rand(batch, hi, generator=generator)
    anchors = keys.argsort(dim=1)[:, :num] + 1
    return anchors.sort(dim=1).values


def sample_prefix_lengths(
    shape: tuple[int, ...], block_size: int, geom: float | None, generator: torch.Generator
) -> torch.Tensor:
    """Visible-prefix lengths [shape] in 0..S-2, truncated geometric ``∝ (1 - geom)^i``.

    ``geom=None`` -> all zeros (plain DFlash training); no random draw is made then.
    """
    if geom is None:
        return torch.zeros(shape, dtype=torch.long)
    if not 0.0 < geom <= 1.0:
        raise ValueError(f"prefix_geom must be in (0, 1], got {geom}")
    i = torch.arange(block_size - 1, dtype=torch.float64)
    probs = (1.0 - geom) ** i
    flat = torch.multinomial(
        (probs / probs.sum()).float(), math.prod(shape), replacement=True, generator=generator
    )
    return flat.reshape(shape)


def slot_weights(block_size: int, gamma: float, prefix: torch.Tensor) -> torch.Tensor:
    """Loss weights [..., S-1] of slots k = 1..S-1 given prefix lengths ``prefix`` [...]:
    ``exp(-(k - 1 - p) / γ)`` for k > p, 0 otherwise, each block normalised to sum 1."""
    k = torch.arange(1, block_size, dtype=torch.float32)
    p = prefix.to(torch.float32)[..., None]
    w = torch.exp(-(k - 1 - p) / gamma) * (k > p)
    return w / w.sum(-1, keepdim=True)


def block_attention_mask(anchors: torch.Tensor, seq_len: int, block_size: int) -> torch.Tensor:
    """Attention mask [B, m*S, T + m*S] (True = visible) over ``[context rows ; block rows]``.

    Query row ``j*S + s`` (block j, slot s) sees context row t iff ``t < anchors[:, j]`` and
    block row ``j'*S + s'`` iff ``j' == j``.
    """
    b, m = anchors.shape
    dev = anchors.device
    a_row = anchors.repeat_interleave(block_size, dim=1)  # [B, m*S]
    ctx = torch.arange(seq_len, device=dev)[None, None, :] < a_row[:, :, None]  # [B, mS, T]
    blk_of = torch.arange(m * block_size, device=dev) // block_size
    blk = (blk_of[:, None] == blk_of[None, :]).expand(b, -1, -1)  # [B, mS, mS]
    return torch.cat([ctx, blk], dim=2)


def build_blocks(
    tokens: torch.Tensor,
    anchors: torch.Tensor,
    block_size: int,
    mask_token_id: int,
    prefix: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block inputs for ``tokens`` [B, T] and ``anchors`` [B, m].

    Returns ``(block_ids [B, m*S], positions [B, m*S], labels [B, m, S-1])``: slot 0 holds
    ``x[a]``, slots 1..p the true tokens (prefix, optional [B, m]), the rest ``mask_token_id``;
    labels are ``x[a + 1 .. a + S - 1]``.
    """
    b, m = anchors.shape
    offs = torch.arange(block_size, device=tokens.device)
    pos = anchors[:, :, None] + offs  # [B, m, S]
    true = torch.gather(tokens, 1, pos.reshape(b, -1)).reshape(b, m, block_size)
    visible = offs[None, None, :] == 0
    if prefix is not None:
        visible = visible | (offs[None, None, :] <= prefix[:, :, None].to(tokens.device))
    ids = torch.where(visible, true, torch.full_like(true, mask_token_id))
    return ids.reshape(b, -1), pos.reshape(b, -1), true[:, :, 1:]


@torch.no_grad()
def target_features(
    target: nn.Module, tokens: torch.Tensor, layer_ids: list[int], autocast: bool
) -> torch.Tensor:
    """Frozen target pass: tokens [B, T] -> features [B, T, F] (fp32)."""
    dev = tokens.device
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
        out = target(tokens, output_hidden_states=True, use_cache=False)
    return extract_features(out.hidden_states, layer_ids).float()


def drafter_loss(
    drafter: DFlashDrafter,
    tokens: torch.Tensor,
    features: torch.Tensor,
    anchors: torch.Tensor,
    prefix: torch.Tensor | None = None,
    gamma: float | None = None,
    autocast: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Decayed block CE of a (bound) drafter on one batch.

    tokens [B, T], features [B, T, F], anchors [B, m], prefix [B, m] or None.
    Returns the scalar loss and metrics (``acc1``: top-1 accuracy at the first predicted slot).
    """
    s_len = drafter.block_size
    b, t_len = tokens.shape
    m = anchors.shape[1]
    gamma = default_gamma(s_len) if gamma is None else gamma
    ids, pos, labels = build_blocks(tokens, anchors, s_len, drafter.mask_token_id, prefix)
    mask = block_attention_mask(anchors, t_len, s_len)
    pfx = prefix if prefix is not None else torch.zeros(b, m, dtype=torch.long)
    weights = slot_weights(s_len, gamma, pfx.cpu()).to(tokens.device)  # [B, m, L]
    with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=autocast):
        hidden = drafter(ids, features.to(drafter.dtype), pos, attention_mask=mask)
        hidden = hidden.reshape(b, m, s_len, -1)[:, :, 1:]  # slot 0 dropped
        logits = drafter.compute_logits(hidden.reshape(b, m * (s_len - 1), -1))
    logits = logits.float().reshape(b, m, s_len - 1, -1)
    ce = F.cross_entropy(logits.flatten(0, 2), labels.flatten(), reduction="none")
    loss = (ce.reshape(b, m, s_len - 1) * weights).sum(-1).mean()
    with torch.no_grad():
        first = torch.gather(labels, 2, pfx.to(tokens.device)[:, :, None])  # first masked slot
        pred = torch.gather(logits.argmax(-1), 2, pfx.to(tokens.device)[:, :, None])
        acc1 = float((first == pred).float().mean())
        hit = (logits.argmax(-1) == labels) | (
            torch.arange(s_len - 1, device=tokens.device) < pfx.to(tokens.device)[:, :, None]
        )
        # Mean accepted length of the chain draft against the data (teacher-forced proxy of τ-1).
        chain = hit.long().cumprod(-1).sum(-1).float().mean()
    return loss, {"acc1": acc1, "chain_len": float(chain)}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
class SequenceSource:
    """Training sequences: random windows of a token stream, or rows of a fixed tensor
    [N, T] (e.g. target-generated continuations), sampled with an explicit generator.

    With both (``data`` a stream and ``sequences`` [N, T]), each batch row comes from
    ``sequences`` with probability ``p_sequences`` and from the stream otherwise.
    """

    def __init__(
        self,
        data: TokenStream | torch.Tensor,
        sequences: torch.Tensor | None = None,
        p_sequences: float = 0.5,
    ) -> None:
        self.data = data
        self.sequences = sequences
        self.p_sequences = p_sequences

    @staticmethod
    def _rows(data: TokenStream | torch.Tensor, n: int, length: int, g: torch.Generator):
        if isinstance(data, TokenStream):
            return data.sample(n, length, g)
        rows = torch.randint(0, data.shape[0], (n,), generator=g)
        return data[rows, :length]

    def sample(self, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """[batch, length] token ids."""
        if self.sequences is None:
            return self._rows(self.data, batch, length, generator)
        use_seq = torch.rand(batch, generator=generator) < self.p_sequences
        a = self._rows(self.data, batch, length, generator)
        b = self._rows(self.sequences, batch, length, generator)
        return torch.where(use_seq[:, None], b, a)


@torch.no_grad()
def generate_continuations(
    target: nn.Module,
    stream: TokenStream,
    num: int,
    prompt_len: int,
    new_tokens: int,
    batch: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """Target-generated training data [num, prompt_len + new_tokens]: greedy continuations of
    random corpus prompts (aligns the drafter with what the target actually emits)."""
    gen = torch.Generator().manual_seed(seed)
    dev = next(target.parameters()).device
    out: list[torch.Tensor] = []
    it = range(0, num, batch)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="generate", dynamic_ncols=True)
    for i in it:
        prompts = stream.sample(min(batch, num - i), prompt_len, gen).to(dev)
        seqs = target.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
        out.append(seqs.cpu())
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------
def make_drafter(target: nn.Module, cfg: DrafterTrainConfig) -> DFlashDrafter:
    """A randomly initialised fp32 drafter for ``target`` (bound), seeded by ``cfg.seed``."""
    gen = torch.Generator().manual_seed(cfg.seed)
    drafter = DFlashDrafter.for_target(
        target,
        num_layers=cfg.num_layers,
        block_size=cfg.block_size,
        mask_token_id=cfg.mask_token_id,
        target_layer_ids=cfg.target_layer_ids,
        num_feature_layers=cfg.num_feature_layers,
        intermediate_size=cfg.intermediate_size,
        generator=gen,
    )
    return drafter.to(torch.float32)


def train_drafter(
    target: nn.Module,
    data: TokenStream | torch.Tensor | SequenceSource,
    cfg: DrafterTrainConfig,
    ckpt_path: str | os.PathLike[str] | None = None,
    *,
    drafter: DFlashDrafter | None = None,
    max_seconds: float | None = None,
    progress: bool = True,
) -> DrafterTrainResult:
    """Train a DFlash drafter against the frozen ``target`` (any HF causal LM).

    Resumes from ``ckpt_path`` when it exists (drafter, optimizer, scheduler, step and RNG
    states), checkpoints every ``cfg.ckpt_every`` steps and when ``max_seconds`` runs out.
    A run resumed from step k takes exactly the step k+1 an uninterrupted run would.
    Returns the (bound, eval-mode) drafter, the step reached and whether ``cfg.steps`` was.
    """
    source = data if isinstance(data, SequenceSource) else SequenceSource(data)
    target.eval()
    for p in target.parameters():
        p.requires_grad_(False)
    dev = next(target.parameters()).device
    if drafter is None:
        drafter = make_drafter(target, cfg)
    drafter = drafter.to(dev)
    drafter.bind(target)
    params = [p for p in drafter.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_lr(s, cfg.steps, cfg.warmup, cfg.min_lr_ratio)
    )
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    step, history = 0, []
    if ckpt_path is not None and Path(ckpt_path).exists():
        step, extra = load_checkpoint(
            ckpt_path, model=drafter, optimizer=opt, generator=gen, scheduler=sched
        )
        history = list(extra.get("log", []))
    layer_ids = drafter.target_layer_ids
    gamma = cfg.gamma if cfg.gamma is not None else default_gamma(cfg.block_size)
    t0 = time.monotonic()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="drafter", dynamic_ncols=True)
    drafter.train()
    running: dict[str, float] = {}
    while step < cfg.steps:
        tokens = source.sample(cfg.batch_size, cfg.context, gen).to(dev)
        anchors = sample_anchors(cfg.batch_size, tokens.shape[1], cfg.block_size, cfg.anchors, gen)
        prefix = (
            sample_prefix_lengths(tuple(anchors.shape), cfg.block_size, cfg.prefix_geom, gen)
            if cfg.prefix_geom is not None
            else None
        )
        feats = target_features(target, tokens, layer_ids, cfg.autocast)
        loss, metrics = drafter_loss(
            drafter, tokens, feats, anchors.to(dev), prefix, gamma, cfg.autocast
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        step += 1
        metrics["loss"] = float(loss.item())
        for k, v in metrics.items():
            running[k] = v if k not in running else 0.95 * running[k] + 0.05 * v
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{running['loss']:.3f}", acc1=f"{running['acc1']:.2f}")
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {k: round(v, 4) for k, v in running.items()}
            history.append({"step": step, **row, "lr": sched.get_last_lr()[0]})
        out_of_time = max_seconds is not None and time.monotonic() - t0 > max_seconds
        if ckpt_path is not None and (
            step % cfg.ckpt_every == 0 or step == cfg.steps or out_of_time
        ):
            save_checkpoint(
                ckpt_path,
                model=drafter,
                optimizer=opt,
                step=step,
                generator=gen,
                scheduler=sched,
                extra={"log": history, "config": asdict(cfg)},
            )
        if out_of_time:
            break
    if bar is not None:
        bar.close()
    drafter.eval()
    return DrafterTrainResult(drafter, step, step >= cfg.steps, history)
