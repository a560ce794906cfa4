"""Files that cannot run code: tensors in safetensors, everything else as JSON in its header.

Traces, training checkpoints and TAPS scorers are one ``.safetensors`` file each. The header's
metadata holds ``format`` (what the file is) and ``json`` (a nested structure whose tensors are
references ``{"__tensor__": key}`` into the file), so reading one parses JSON and raw tensor
bytes only; no pickle is ever loaded. Files in the pickle format (``torch.save``) are refused
with a ValueError before anything in them is read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["pack", "read_tensor_file", "unpack", "write_tensor_file"]

_TENSOR, _TUPLE, _INT_KEYS = "__tensor__", "__tuple__", "__int_keys__"
_MARKERS = (_TENSOR, _TUPLE, _INT_KEYS)


def pack(obj: Any) -> tuple[Any, dict[str, Tensor]]:
    """Split ``obj`` (None, bool, int, float, str, Tensor, and lists, tuples and dicts with str
    or int keys of these) into a JSON-able structure and its tensors (CPU, contiguous, keyed by
    their path in ``obj``). :func:`unpack` inverts it exactly (types included)."""
    tensors: dict[str, Tensor] = {}
    storages: set[int] = set()

    def enc(x: Any, where: str) -> Any:
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, np.bool_):
            return bool(x)
        if isinstance(x, (int, np.integer)):
            return int(x)
        if isinstance(x, float):  # np.float64 included, converted exactly
            return float(x)
        if isinstance(x, Tensor):
            t = x.detach().cpu().contiguous()
            ptr = t.untyped_storage().data_ptr()
            if ptr in storages:
                t = t.clone()  # safetensors refuses tensors that share storage (tied weights)
            storages.add(t.untyped_storage().data_ptr())
            key = where or "."
            if key in tensors:
                raise TypeError(f"pack: two tensors at the path {key!r}")
            tensors[key] = t
            return {_TENSOR: key}
        if isinstance(x, list):
            return [enc(v, f"{where}/{i}") for i, v in enumerate(x)]
        if isinstance(x, tuple):
            return {_TUPLE: [enc(v, f"{where}/{i}") for i, v in enumerate(x)]}
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x):
                if any(k in _MARKERS for k in x):
                    raise TypeError(f"pack: reserved key in the dict at {where or '/'!r}")
                return {k: enc(v, f"{where}/{k}") for k, v in x.items()}
            if all(isinstance(k, int) and not isinstance(k, bool) for k in x):
                return {_INT_KEYS: [[k, enc(v, f"{where}/{k}")] for k, v in x.items()]}
            raise TypeError(f"pack: dict keys at {where or '/'!r} must be all str or all int")
        raise TypeError(f"pack: cannot store {type(x).__name__} at {where or '/'!r}")

    return enc(obj, ""), tensors


def unpack(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """The structure :func:`pack` split into ``obj`` and ``tensors``."""
    if isinstance(obj, list):
        return [unpack(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1 and _TENSOR in obj:
        key = obj[_TENSOR]
        if not isinstance(key, str) or key not in tensors:
            raise ValueError(f"tensor {key!r} is referenced but not stored")
        return tensors[key]
    if len(obj) == 1 and _TUPLE in obj:
        return tuple(unpack(v, tensors) for v in obj[_TUPLE])
    if len(obj) == 1 and _INT_KEYS in obj:
        return {int(k): unpack(v, tensors) for k, v in obj[_INT_KEYS]}
    return {k: unpack(v, tensors) for k, v in obj.items()}


def write_tensor_file(path: str | os.PathLike[str], fmt: str, obj: Any) -> None:
    """Write ``obj`` (see :func:`pack`) as a safetensors file tagged ``fmt``, atomically: a
    temporary file in the same directory renamed over ``path``, so a crash mid-write keeps
    the previous file."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, expected a file path")
    structure, tensors = pack(obj)
    meta = {"format": fmt, "json": json.dumps(structure, allow_nan=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory (os.replace is atomic there); the pid keeps concurrent writers apart.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pickle_kind(head: bytes) -> str | None:
    if head.startswith(b"PK\x03\x04"):
        return "a torch.save (zip + pickle) file"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle file"
    return None


def read_tensor_file(path: str | os.PathLike[str], fmt: str, remedy: str) -> Any:
    """Read a file written by :func:`write_tensor_file` with format ``fmt``; returns the object.

    Raises ValueError naming ``path`` (and ``remedy``: how to make a new one) when it is not
    such a file, in particular for the pickle format, which is never unpickled.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: u64 little-endian header length, then the JSON header.
    framed = len(head) == 9 and head[8:9] == b"{"
    framed = framed and int.from_bytes(head[:8], "little") <= path.stat().st_size - 8
    kind = None if framed else _pickle_kind(head)
    if kind is not None:
        raise ValueError(
            f"{path}: {kind}; difftree_rt no longer loads the pickle format (unpickling can "
            f"run code). {remedy}"
        )
    if not framed:
        raise ValueError(f"{path}: not a safetensors file (expected {fmt!r}). {remedy}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if meta.get("format") == fmt else {}
    except SafetensorError as e:
        raise ValueError(f"{path}: unreadable safetensors file ({e}). {remedy}") from None
    if meta.get("format") != fmt:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {fmt!r}. {remedy}")
    try:
        return unpack(json.loads(meta["json"]), tensors)
    except (KeyError, TypeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}: malformed {fmt!r} file ({e}). {remedy}") from None
