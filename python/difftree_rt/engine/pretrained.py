"""``SpeculativeDecoder.from_pretrained``: a target and a DFlash drafter from local directories
(or already-loaded models), the HF way. No download: paths are local directories written by
``save_pretrained`` (HF for the target, the published DFlash layout for the drafter)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..models.dflash import DFlashDrafter

if TYPE_CHECKING:
    from .decoder import SpeculativeDecoder

PathLike = str | os.PathLike[str]
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    found = getattr(torch, str(dtype), None)
    if not isinstance(found, torch.dtype):
        raise ValueError(f"dtype must be a torch dtype or its name ('bfloat16'), got {dtype!r}")
    return found


def _load_target(target: PathLike | nn.Module, dtype: torch.dtype, device: torch.device) -> Any:
    if isinstance(target, nn.Module):
        return target
    if not os.path.isdir(target):
        raise ValueError(f"target: expected a local model directory or a model, got {target!r}")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=dtype, use_safetensors=True)
    return model.to(device).eval()


def _load_drafter(
    name: str, drafter: PathLike | DFlashDrafter | None, dtype: torch.dtype, device: torch.device
) -> DFlashDrafter | None:
    if drafter is None:
        return None
    if isinstance(drafter, DFlashDrafter):
        # The drafter must run in the target's dtype on its device (nn.Module.to: in place).
        return drafter.to(device=device, dtype=dtype)
    if not os.path.isdir(drafter):
        raise ValueError(
            f"{name}: expected a local drafter directory or a DFlashDrafter, got {drafter!r}"
        )
    return DFlashDrafter.from_pretrained(str(drafter)).to(device=device, dtype=dtype)


def from_pretrained(
    cls: type[SpeculativeDecoder],
    target: PathLike | nn.Module,
    drafter: PathLike | DFlashDrafter | None = None,
    policy: Any = "ddtree",
    budget: int = 64,
    *,
    vp_drafter: PathLike | DFlashDrafter | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> SpeculativeDecoder:
    """See :meth:`SpeculativeDecoder.from_pretrained`."""
    dev = _device(device)
    dt = _dtype(dtype, dev)
    model = _load_target(target, dt, dev)
    if isinstance(target, nn.Module):  # a loaded model keeps its own device and dtype
        param = next(model.parameters())
        dev, dt = param.device, param.dtype
    draft = _load_drafter("drafter", drafter, dt, dev)
    vp = _load_drafter("vp_drafter", vp_drafter, dt, dev)
    if vp is not None:
        if policy != "d2sd":
            raise ValueError(
                f"vp_drafter is D²SD's second drafter: it needs policy='d2sd', got {policy!r}"
            )
        from ..policies import D2SDPolicy

        policy = D2SDPolicy(budget, vp_drafter=vp)
    dec = cls(model, draft, policy, budget, **kwargs)
    dec.tokenizer = None
    # Only from tokenizer files: AutoTokenizer would otherwise build an empty one from the
    # model config.
    if not isinstance(target, nn.Module) and any(
        os.path.exists(os.path.join(target, f)) for f in _TOKENIZER_FILES
    ):
        from transformers import AutoTokenizer

        dec.tokenizer = AutoTokenizer.from_pretrained(str(target))
    return dec
