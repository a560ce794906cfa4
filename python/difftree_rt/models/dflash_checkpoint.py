"""Checkpoint I/O of the DFlash drafter, in the published directory layout: ``config.json``
plus ``model.safetensors`` (or the shards a ``model.safetensors.index.json`` names).

Loading reads local files only and checks before it builds anything: shard names stay inside
the directory, the config's layer count and every parameter shape are compared with the
safetensors headers (no tensor data read), and only then are the tensors loaded. Every error
names the file and the field. :class:`~difftree_rt.models.dflash.DFlashDrafter` exposes these
as ``save_pretrained`` / ``from_pretrained``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .dflash_config import DFlashConfig, read_json

if TYPE_CHECKING:
    from .dflash import DFlashDrafter

__all__ = ["CONFIG_NAME", "WEIGHTS_INDEX_NAME", "WEIGHTS_NAME", "load_drafter", "save_drafter"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# Keys some exports carry that are not drafter parameters (the target owns embedding / head;
# RoPE tables are recomputed).
_IGNORED_KEYS = ("embed_tokens.weight", "lm_head.weight", "rotary_emb.inv_freq")


def save_drafter(drafter: DFlashDrafter, path: str | os.PathLike[str]) -> None:
    """Write ``drafter`` into directory ``path`` (created if missing): ``config.json`` with its
    dtype, and every parameter, on CPU, in one ``model.safetensors``."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    dtype_name = str(drafter.dtype).removeprefix("torch.")
    drafter.config.to_json_file(os.path.join(path, CONFIG_NAME), dtype=dtype_name)
    state = {k: v.detach().contiguous().cpu() for k, v in drafter.state_dict().items()}
    save_file(state, os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})


def load_drafter(
    cls: type[DFlashDrafter],
    path: str | os.PathLike[str],
    torch_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> DFlashDrafter:
    """A ``cls`` drafter loaded from checkpoint directory ``path``, cast to ``torch_dtype`` and
    moved to ``device`` (``None``: as stored / CPU); the checks and errors are those of
    :meth:`DFlashDrafter.from_pretrained`. The module is built on the meta device and the
    loaded tensors assigned to it, so no weights are initialised only to be overwritten."""
    directory = os.fspath(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"drafter checkpoint {directory} is not a directory")
    config_path = os.path.join(directory, CONFIG_NAME)
    raw = read_json(config_path, "config")
    files = _weight_files(directory)
    stored = _header_shapes(files)
    names = _drafter_keys(list(stored))
    shapes = {name: stored[k] for k, name in names.items()}
    _check_layer_count(raw, shapes, config_path, directory)
    config = DFlashConfig.from_dict(raw, source=config_path)
    with torch.device("meta"):
        drafter = cls(config)
    expected = {k: tuple(v.shape) for k, v in drafter.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    mismatched = [
        f"{k}: expected {expected[k]}, got {shapes[k]}"
        for k in sorted(set(expected) & set(shapes))
        if expected[k] != shapes[k]
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if unexpected:
            parts.append("unexpected " + ", ".join(unexpected))
        if mismatched:
            parts.append("shape mismatch " + "; ".join(mismatched))
        raise ValueError(
            f"checkpoint at {directory} does not match its config {config_path}: "
            + " | ".join(parts)
        )
    drafter.load_state_dict(_load_state(files, names), strict=True, assign=True)
    drafter.to(device=device, dtype=torch_dtype)
    return drafter


def _confined(directory: str, name: Any, source: str) -> str:
    """The path of file ``name`` of checkpoint ``directory`` (``source``: the file naming it):
    ``ValueError`` unless it is a relative name that stays inside the directory after
    resolving symlinks. A Hugging Face cache snapshot (``<repo>/snapshots/<rev>/...``) links
    its files to ``<repo>/blobs/``, so that folder counts as inside."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{source}: a shard must be a file name, got {name!r}")
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise ValueError(
            f"{source}: shard {name!r} lies outside the checkpoint directory {directory}"
        )
    file = os.path.join(directory, name)
    root = os.path.realpath(directory)
    allowed = [root]
    up = root
    while os.path.dirname(up) != up:
        if os.path.basename(up) == "snapshots":
            allowed.append(os.path.join(os.path.dirname(up), "blobs"))
            break
        up = os.path.dirname(up)
    real = os.path.realpath(file)
    if not any(os.path.commonpath([real, a]) == a for a in allowed):
        raise ValueError(
            f"{source}: shard {name!r} resolves to {real}, outside the checkpoint directory "
            f"{directory}"
        )
    if not os.path.isfile(real):
        raise FileNotFoundError(f"{source}: shard {name!r} does not exist in {directory}")
    return file


def _weight_files(directory: str) -> list[str]:
    """The safetensors files of a checkpoint: ``model.safetensors``, or the shards its index
    names (each confined to the directory, see :func:`_confined`)."""
    single = os.path.join(directory, WEIGHTS_NAME)
    index = os.path.join(directory, WEIGHTS_INDEX_NAME)
    if os.path.lexists(single):
        return [_confined(directory, WEIGHTS_NAME, directory)]
    if not os.path.lexists(index):
        raise FileNotFoundError(f"no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} in {directory}")
    raw = read_json(index, "weight index")
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or not isinstance(weight_map, dict):
        raise ValueError(
            f"{index}: a weight index must be a JSON object with a 'weight_map' object"
        )
    for key, name in weight_map.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{index}: weight_map entry {key!r} must be a file name, got {name!r}")
    return [_confined(directory, name, index) for name in sorted(set(weight_map.values()))]


def _drafter_keys(names: Sequence[str]) -> dict[str, str]:
    """Stored tensor name -> drafter parameter name, without the keys that are not drafter
    parameters (some exporters prefix every key with "model."; published drafters do not)."""
    strip = bool(names) and all(k.startswith("model.") for k in names)
    out = {k: k[len("model.") :] if strip else k for k in names}
    return {k: v for k, v in out.items() if not v.endswith(_IGNORED_KEYS)}


def _header_shapes(files: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Stored tensor name -> shape, read from the safetensors headers only (no tensor data)."""
    from safetensors import SafetensorError, safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
        except SafetensorError as e:
            raise ValueError(f"{file} is not a readable safetensors file: {e}") from None
    return shapes


def _check_layer_count(
    raw: Any, shapes: dict[str, tuple[int, ...]], config_path: str, directory: str
) -> None:
    """``ValueError`` when the config's ``num_hidden_layers`` (an int; other types are
    reported by the config parser) differs from the decoder layers the weights hold, before
    anything is built from it."""
    n = raw.get("num_hidden_layers") if isinstance(raw, dict) else None
    if not isinstance(n, int) or isinstance(n, bool):
        return
    present = {int(k.split(".")[1]) for k in shapes if re.match(r"layers\.\d+\.", k)}
    if n != len(present):
        raise ValueError(
            f"{config_path}: num_hidden_layers is {n}, but the weights in {directory} hold "
            f"{len(present)} decoder layers"
        )


def _load_state(files: Sequence[str], names: dict[str, str]) -> dict[str, torch.Tensor]:
    """The drafter parameters stored in ``files``, renamed by ``names`` (:func:`_drafter_keys`;
    stored tensors not in it are skipped)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in files:
        tensors = load_file(file, device="cpu")
        state.update({names[k]: v for k, v in tensors.items() if k in names})
    return state
