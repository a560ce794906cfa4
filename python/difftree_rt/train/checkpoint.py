"""Resumable training checkpoints: model + optimizer + scheduler + step + every RNG.

A checkpoint is one safetensors file (:mod:`difftree_rt.safe_files`: tensors, RNG states as
uint8 tensors, the rest as JSON; never a pickle) written atomically (temp file + rename), so a
run killed mid-write keeps the previous checkpoint. Restoring it and taking the next step
gives bit-identical parameters to an uninterrupted run (same data draws, same dropout/noise
draws).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..safe_files import read_tensor_file, write_tensor_file

__all__ = ["capture_rng", "load_checkpoint", "read_checkpoint", "restore_rng", "save_checkpoint"]

FORMAT = "difftree_rt.checkpoint/2"
_REMEDY = "Delete it to start training over (pickle checkpoints cannot be resumed)."


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """The state of python, numpy, torch (CPU, CUDA) RNGs and of ``generator``."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
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
    """Write ``{model, optimizer, scheduler, step, rng, extra}`` atomically to ``path``
    (``extra``: JSON-able values and tensors)."""
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": int(step),
        "rng": capture_rng(generator),
        "extra": extra or {},
    }
    write_tensor_file(path, FORMAT, payload)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The payload :func:`save_checkpoint` wrote (a dict with ``step`` and ``extra``, ...).

    Raises ValueError naming ``path`` for anything else, a pickle checkpoint included.
    """
    payload = read_tensor_file(Path(path), FORMAT, _REMEDY)
    if not isinstance(payload, dict) or not {"model", "optimizer", "step", "rng"} <= set(payload):
        raise ValueError(f"{path}: malformed checkpoint (missing fields). {_REMEDY}")
    return payload


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | None = None,
    scheduler: Any | None = None,
) -> tuple[int, dict[str, Any]]:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns ``(step, extra)``."""
    payload = read_checkpoint(path)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    restore_rng(payload["rng"], generator)
    return int(payload["step"]), dict(payload.get("extra") or {})
