"""Argument types and checks of the ``difftree-rt`` commands.

A user mistake is an :class:`UsageError` (or an argparse error): one line on stderr, exit code
2, reported before any model loads. The argparse ``type=`` functions here run while the command
line is parsed and import nothing heavy, so most mistakes are reported in a fraction of a second.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

__all__ = [
    "DTYPES",
    "POLICY_NAMES",
    "UsageError",
    "add_device_options",
    "add_pair_options",
    "check_budgets",
    "device_name",
    "dtype_name",
    "existing_file",
    "int_at_least",
    "model_dir",
    "nonempty_text",
    "nonneg_float",
    "nonneg_int",
    "out_dir",
    "out_file",
    "out_path",
    "positive_float",
    "positive_int",
    "probability",
    "token_ids",
]


class UsageError(ValueError):
    """A mistake in the command line or the files it names: printed as one line, exit code 2."""


#: The policy names ``SpeculativeDecoder`` accepts (``ar`` + ``policies.POLICIES``), spelled out
#: so that a typo is reported before torch is imported (a test keeps the two equal).
POLICY_NAMES = ("ar", "chain", "ddtree", "caddtree", "presto", "taps", "d2sd", "auto")

#: ``--dtype`` spellings -> the torch attribute.
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}
DTYPE_HELP = "float32 | bfloat16 | float16 (or fp32, bf16, fp16)"


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonneg_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def nonneg_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def probability(text: str) -> float:
    """A number in (0, 1]."""
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def dtype_name(text: str) -> str:
    """``bf16`` / ``bfloat16`` / ... -> the torch dtype's name."""
    name = DTYPES.get(text.strip().lower())
    if name is None:
        raise argparse.ArgumentTypeError(f"must be one of {DTYPE_HELP}, got {text!r}")
    return name


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def device_name(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether CUDA is there is checked later, by
    :func:`difftree_rt.cli.runtime.resolve_device`)."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def nonempty_text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def token_ids(text: str) -> list[int]:
    """``"1 2 3"`` -> ``[1, 2, 3]`` (at least one id, each >= 0)."""
    parts = text.replace(",", " ").split()
    if not parts:
        raise argparse.ArgumentTypeError("expected space-separated token ids, got none")
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integer token ids, got {text!r}") from None
    if min(ids) < 0:
        raise argparse.ArgumentTypeError(f"token ids must be >= 0, got {min(ids)}")
    return ids


def existing_file(text: str) -> str:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"not a file: {text}")
    return text


def existing_path(text: str) -> str:
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"no such file or directory: {text}")
    return text


def model_dir(text: str) -> str:
    """A local model directory holding ``config.json`` (never a hub id: nothing is fetched)."""
    path = Path(text)
    if not path.is_dir():
        what = "not a directory" if path.exists() else "no such directory"
        raise argparse.ArgumentTypeError(f"{what}: {text} (expected a local model directory)")
    if not (path / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{text} has no config.json (not a model directory)")
    return text


def _writable_parent(path: Path, text: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: cannot write in {parent}")


def out_file(text: str) -> str:
    """An output file: not a directory, its directory exists and is writable."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory (expected a file path)")
    if not path.parent.is_dir() and str(path.parent):
        raise argparse.ArgumentTypeError(f"{text}: directory {path.parent} does not exist")
    _writable_parent(path, text)
    return text


def out_path(text: str) -> str:
    """An output file whose missing parent directories are created: not a directory, and the
    nearest existing ancestor is a writable directory."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory (expected a file path)")
    _writable_parent(Path(text), text)
    return text


def int_at_least(lo: int):  # type: ignore[no-untyped-def]
    """An argparse type: an integer >= ``lo``."""

    def parse(text: str) -> int:
        value = _int(text)
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value

    parse.__name__ = f"int_at_least_{lo}"
    return parse


def out_dir(text: str) -> str:
    """An output directory: an existing directory, or one that can be created."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    _writable_parent(path / "x", text)
    return text


def add_device_options(p: argparse.ArgumentParser, threads: bool = True) -> None:
    """``--device``, ``--dtype`` and (``threads``) ``--threads``, shared by the commands that
    run models."""
    p.add_argument(
        "--device",
        type=device_name,
        default="auto",
        help="auto (cuda when available, else cpu) | cpu | cuda | cuda:N",
    )
    p.add_argument(
        "--dtype",
        type=dtype_name,
        default=None,
        help=f"{DTYPE_HELP} (default: bfloat16 on CUDA, float32 on CPU)",
    )
    if threads:
        p.add_argument(
            "--threads",
            type=positive_int,
            default=None,
            help="torch CPU threads (default: 1 on CPU for models under 256 MiB, "
            "which is fastest there; otherwise torch's default)",
        )


def add_pair_options(p: argparse.ArgumentParser, vp: bool = True) -> None:
    """``--target``, ``--drafter`` (and ``vp``: ``--vp-drafter``): local model directories."""
    p.add_argument(
        "--target",
        type=model_dir,
        default=None,
        help="local HF causal LM directory (default: the shipped pair's)",
    )
    p.add_argument(
        "--drafter",
        type=model_dir,
        default=None,
        help="local DFlash drafter directory (default: the shipped pair's)",
    )
    if vp:
        p.add_argument(
            "--vp-drafter",
            type=model_dir,
            default=None,
            help="d2sd's second (variable-prefix) drafter (default: the shipped pair's, "
            "when the drafter is the shipped one)",
        )


def check_budgets(budgets: list[int], flag: str) -> None:
    """Each budget within the core's limit (imports torch and the extension, never a model)."""
    from difftree_rt.ops import MAX_BUDGET

    over = [b for b in budgets if b > MAX_BUDGET]
    if over:
        raise UsageError(f"{flag}: at most {MAX_BUDGET} draft nodes, got {over[0]}")
