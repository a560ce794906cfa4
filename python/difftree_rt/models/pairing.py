"""Does a drafter fit a target? The checks a decoder runs once, before any forward.

A DFlash drafter runs the target's embedding and LM head on its own activations and reads the
target's features, so it must fit the target's geometry (``DFlashDrafter.check_target``), have
its dtype and device, and draft at least one token per block. D²SD's second-pass drafter must
also read the same feature layers as the first (the target captures one set per round).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .dflash import DFlashDrafter

__all__ = ["check_drafter", "check_vp_drafter"]


def check_drafter(name: str, drafter: Any, model: nn.Module) -> DFlashDrafter:
    """Check ``drafter`` against the target ``model`` and bind it (``ValueError`` naming
    ``name`` and every misfit)."""
    if not isinstance(drafter, DFlashDrafter):
        raise ValueError(f"{name} must be a DFlashDrafter, got {type(drafter).__name__}")
    errors = drafter.check_target(model)
    if errors:
        raise ValueError(f"{name} does not fit the target model:\n  - " + "\n  - ".join(errors))
    if drafter.block_size < 2:
        raise ValueError(
            f"{name}: block_size must be >= 2 (one bonus slot + draft slots), "
            f"got {drafter.block_size}"
        )
    param = next(model.parameters())
    if drafter.dtype != param.dtype or drafter.device != param.device:
        raise ValueError(
            f"{name} is {drafter.dtype} on {drafter.device} but the target is {param.dtype} on "
            f"{param.device}: they must match (the drafter runs the target's embedding and LM "
            f"head); move it with {name}.to(device={str(param.device)!r}, dtype={param.dtype}) "
            "(SpeculativeDecoder.from_pretrained does this for you)"
        )
    drafter.bind(model)
    return drafter


def check_vp_drafter(vp: Any, drafter: DFlashDrafter | None, model: nn.Module) -> DFlashDrafter:
    """Check a redraft policy's second-pass drafter against the target and the first drafter,
    and bind it."""
    assert drafter is not None
    if not isinstance(vp, DFlashDrafter):
        raise ValueError(f"vp_drafter must be a DFlashDrafter, got {type(vp).__name__}")
    errors = vp.check_target(model)
    if errors:
        raise ValueError("vp_drafter does not fit the target model:\n  - " + "\n  - ".join(errors))
    if list(vp.config.target_layer_ids) != list(drafter.config.target_layer_ids):
        raise ValueError(
            f"vp_drafter reads target layers {list(vp.config.target_layer_ids)} but the "
            f"drafter reads {list(drafter.config.target_layer_ids)}: both must read the same "
            "features (the target captures one set per round)"
        )
    if vp.block_size < 2:
        raise ValueError(f"vp_drafter: block_size must be >= 2, got {vp.block_size}")
    return check_drafter("vp_drafter", vp, model)
