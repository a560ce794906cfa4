"""Guards for graph-mode rounds: a captured CUDA graph cannot contain a host read or an op
whose output shape depends on device data. :func:`forbid_host_sync` turns both into errors on
any device, so CPU tests catch what would break a capture on a GPU."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSyncError", "forbid_host_sync"]


class HostSyncError(RuntimeError):
    """A round function read a device value on the host (raised under :func:`forbid_host_sync`)."""


class _SyncOpGuard(TorchDispatchMode):
    """Raises :class:`HostSyncError` on the aten ops that read device data on the host or have
    data-dependent shapes (so a CUDA graph cannot capture them), whatever the device: it lets
    the CPU tests see what only the CUDA sync debug mode would otherwise catch."""

    _NAMES = frozenset(
        {"nonzero", "masked_select", "_local_scalar_dense", "unique", "_unique", "_unique2",
         "unique_dim", "unique_consecutive", "bincount"}
    )  # fmt: skip

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        bad = name in self._NAMES
        if name == "histc":  # reads the data's range back only when min == max (MoE routing
            # in transformers passes an explicit range to stay graph-capturable)
            lo = args[2] if len(args) > 2 else kwargs.get("min", 0)
            hi = args[3] if len(args) > 3 else kwargs.get("max", 0)
            bad = lo == hi
        if name == "repeat_interleave":  # tensor repeats: the output length is data
            bad = kwargs.get("output_size") is None and func._overloadname != "self_int"
        if name in ("index", "index_put", "index_put_") and len(args) > 1:
            bad = any(
                isinstance(t, Tensor) and t.dtype == torch.bool
                for t in (args[1] or ())
                if t is not None
            )
        if bad:
            raise HostSyncError(f"aten.{name} inside a graph-mode round (a host sync or a "
                                "data-dependent shape)")  # fmt: skip
        return func(*args, **kwargs)


@contextlib.contextmanager
def forbid_host_sync() -> Iterator[None]:
    """Make every Python-level device->host read raise :class:`HostSyncError` inside the block.

    Patches ``Tensor.item``, ``tolist``, ``__bool__``, ``__int__``, ``__float__`` and
    ``__index__`` (the ways Python code turns a tensor value into a host value); on CUDA also
    sets ``torch.cuda.set_sync_debug_mode("error")``, which catches syncs inside C++ ops too.
    On any device, a dispatch-mode guard rejects the aten ops that sync or have data-dependent
    shapes (``nonzero``, boolean indexing, ``masked_select``, ``unique``, ``repeat_interleave``
    without ``output_size``, ...), so CPU tests catch what would break a capture.
    """
    names = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def make(name: str) -> Callable[..., Any]:
        def forbidden(self: Tensor, *args: Any, **kwargs: Any) -> Any:
            raise HostSyncError(f"Tensor.{name} inside a graph-mode round (a host sync)")

        return forbidden

    for n in names:
        setattr(torch.Tensor, n, make(n))
    cuda_mode = torch.cuda.get_sync_debug_mode() if torch.cuda.is_available() else None
    if cuda_mode is not None:
        torch.cuda.set_sync_debug_mode("error")
    try:
        with _SyncOpGuard():
            yield
    finally:
        for n, fn in saved.items():
            setattr(torch.Tensor, n, fn)
        if cuda_mode is not None:
            torch.cuda.set_sync_debug_mode(cuda_mode)
