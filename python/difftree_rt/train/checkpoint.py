"""Resumable training checkpoints: model + optimizer + scheduler + step + every RNG.

A checkpoint is one ``torch.save`` file written atomically (temp file + rename), so a run
killed mid-write keeps the previous checkpoint. Restoring it and taking the next step gives
the same parameters as an uninterrupted run (same data draws, same dropout/noise draws).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng", "load_checkpoint", "restore_rng", "save_checkpoint"]


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """The state of python, numpy, torch (CPU, CUDA) RNGs and of ``generator``."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    generator: torch.Generator | None = None,
    scheduler: Any | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``{model, optimizer, scheduler, step, rng, extra}`` atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": int(step),
        "rng": capture_rng(generator),
        "extra": extra or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | None = None,
    scheduler: Any | None = None,
) -> tuple[int, dict[str, Any]]:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns ``(step, extra)``."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=False)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    restore_rng(payload["rng"], generator)
    return int(payload["step"]), dict(payload.get("extra") or {})
