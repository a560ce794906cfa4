"""Training a small causal LM (the reference target) from scratch, in resumable chunks.

Vocabulary: B batch, T context length, V vocabulary.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .checkpoint import load_checkpoint, save_checkpoint
from .corpus import TokenStream

__all__ = ["LMTrainConfig", "cosine_lr", "evaluate_perplexity", "train_lm"]


@dataclass
class LMTrainConfig:
    """Optimisation settings of :func:`train_lm`."""

    steps: int = 2400
    batch_size: int = 16
    context: int = 256
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 200
    autocast: bool = True


def cosine_lr(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _autocast(device: torch.device, enabled: bool) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_lm(
    model: torch.nn.Module,
    stream: TokenStream,
    cfg: LMTrainConfig,
    ckpt_path: str | os.PathLike[str],
    *,
    max_seconds: float | None = None,
    log: list[dict[str, Any]] | None = None,
    progress: bool = True,
) -> tuple[int, bool]:
    """Train ``model`` (an HF causal LM) on windows of ``stream``; resume from ``ckpt_path``.

    Runs until ``cfg.steps`` or ``max_seconds``, checkpointing every ``cfg.ckpt_every`` steps
    and at exit. Returns ``(step, finished)``. ``log`` receives ``{step, loss, lr, tokens}``
    rows (also stored in the checkpoint's extra).
    """
    device = next(model.parameters()).device
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_lr(s, cfg.steps, cfg.warmup, cfg.min_lr_ratio)
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    step, history = 0, []
    if Path(ckpt_path).exists():
        step, extra = load_checkpoint(
            ckpt_path, model=model, optimizer=opt, generator=gen, scheduler=sched
        )
        history = list(extra.get("log", []))
    if log is not None:
        log[:] = history
    use_autocast = cfg.autocast
    t0 = time.monotonic()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="target", dynamic_ncols=True)
    model.train()
    running = None
    while step < cfg.steps:
        batch = stream.sample(cfg.batch_size, cfg.context + 1, gen).to(device)
        with _autocast(device, use_autocast):
            logits = model(batch[:, :-1]).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        step += 1
        value = float(loss.item())
        running = value if running is None else 0.95 * running + 0.05 * value
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}")
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {
                "step": step,
                "loss": round(running, 4),
                "lr": sched.get_last_lr()[0],
                "tokens": step * cfg.batch_size * cfg.context,
            }
            history.append(row)
            if log is not None:
                log.append(row)
        out_of_time = max_seconds is not None and time.monotonic() - t0 > max_seconds
        if step % cfg.ckpt_every == 0 or step == cfg.steps or out_of_time:
            save_checkpoint(
                ckpt_path,
                model=model,
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
    model.eval()
    return step, step >= cfg.steps


@torch.no_grad()
def evaluate_perplexity(
    model: torch.nn.Module,
    stream: TokenStream,
    context: int,
    max_windows: int = 256,
    batch: int = 8,
) -> tuple[float, int]:
    """Perplexity of ``model`` on non-overlapping windows [n, context + 1]; ``(ppl, tokens)``."""
    device = next(model.parameters()).device
    wins = stream.windows(context + 1, stride=context)[:max_windows]
    total, count = 0.0, 0
    model.eval()
    for i in range(0, wins.shape[0], batch):
        x = wins[i : i + batch].to(device)
        logits = model(x[:, :-1]).logits.float()
        total += float(F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum"))
        count += x[:, 1:].numel()
    return math.exp(total / max(1, count)), count
