"""Device and CPU-thread setup of the ``difftree-rt`` commands (checked before models load)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .args import UsageError

__all__ = ["SMALL_MODEL_BYTES", "resolve_device", "setup_threads", "weights_bytes"]

#: Up to this many bytes of weights a CPU run defaults to one torch thread: for models this
#: small each op is too short to amortise a parallel region, and extra threads only add
#: synchronisation (on 2 shared cores, 2 threads made tokens/s many times lower and noisy).
SMALL_MODEL_BYTES = 256 * 2**20


def resolve_device(device: str, flag: str = "--device") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda``/``cuda:N`` must exist."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no GPU found"
            raise UsageError(f"{flag} {device}: CUDA is not available ({why}); use --device cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"{flag} {device}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    return device


def weights_bytes(model_dirs: Iterable[str | Path | None]) -> int:
    """Total size of the weight files (``*.safetensors``, ``*.bin``) in the directories."""
    total = 0
    for d in model_dirs:
        if d is None or not Path(d).is_dir():
            continue
        for f in Path(d).iterdir():
            if f.suffix in (".safetensors", ".bin") and f.is_file():
                total += f.stat().st_size
    return total


def setup_threads(
    requested: int | None, device: str, model_dirs: Iterable[str | Path | None]
) -> str:
    """Set torch's CPU thread count and return a line saying what is used and why.

    ``requested`` (``--threads``) wins; otherwise a CPU run of a model with at most
    :data:`SMALL_MODEL_BYTES` of weights uses 1 thread (measured fastest for the shipped pair),
    anything else keeps torch's default.
    """
    import torch

    if requested is not None:
        torch.set_num_threads(requested)
        return f"{requested} torch thread(s) (--threads)"
    if device == "cpu" and weights_bytes(model_dirs) <= SMALL_MODEL_BYTES:
        torch.set_num_threads(1)
        return "1 torch thread (default for a model this small on CPU; --threads N to change)"
    return f"{torch.get_num_threads()} torch thread(s) (torch's default)"
