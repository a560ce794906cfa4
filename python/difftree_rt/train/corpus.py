"""Text corpora for training: the Python standard library source, a byte-level BPE tokenizer,
and token streams with random fixed-length windows.

Vocabulary: N total tokens of a stream, B batch, T window length.

The standard library is present on every machine with a Python, so the reference pair can be
rebuilt anywhere. The split is deterministic: a file is held out when the MD5 of its path
relative to the stdlib root is 0 mod ``holdout_mod`` (default 40, ~2.5% of files).
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "EOS_TOKEN",
    "MASK_TOKEN",
    "PAD_TOKEN",
    "TokenStream",
    "encode_files",
    "load_tokenizer",
    "site_packages_files",
    "stdlib_files",
    "stdlib_root",
    "train_tokenizer",
]

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
MASK_TOKEN = "<|mask|>"
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "idlelib", "lib2to3"}


def stdlib_root() -> Path:
    """The directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def _is_heldout(rel: str, holdout_mod: int) -> bool:
    return int(hashlib.md5(rel.encode()).hexdigest(), 16) % holdout_mod == 0


def stdlib_files(
    split: str = "train", holdout_mod: int = 40, root: Path | None = None
) -> list[Path]:
    """Sorted ``.py`` files of the standard library (no site-packages) for ``split``.

    ``split`` is ``"train"``, ``"heldout"`` or ``"all"``. Files that are not UTF-8 or are empty
    are skipped.
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be train/heldout/all, got {split!r}")
    root = root or stdlib_root()
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            held = _is_heldout(rel, holdout_mod)
            if split == "all" or (split == "heldout") == held:
                out.append(path)
    return out


def site_packages_files(max_bytes: int | None = None) -> list[Path]:
    """Sorted ``.py`` files of the interpreter's site-packages (installed packages' source),
    up to ``max_bytes`` in total. Machine-dependent: it depends on what is installed."""
    root = Path(sysconfig.get_paths()["purelib"])
    out: list[Path] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = Path(dirpath) / name
            size = path.stat().st_size
            if max_bytes is not None and total + size > max_bytes:
                return out
            total += size
            out.append(path)
    return out


def read_texts(files: Sequence[Path]) -> Iterator[str]:
    """The UTF-8 text of each file (unreadable or empty files skipped)."""
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            yield text


def train_tokenizer(
    files: Sequence[Path], vocab_size: int, out_dir: str | os.PathLike[str]
) -> None:
    """Train a byte-level BPE on ``files`` and save it as an HF fast tokenizer in ``out_dir``.

    Special tokens: ``<|endoftext|>`` (eos, document separator), ``<|pad|>``, ``<|mask|>``
    (the DFlash drafter's mask token). Loadable with ``AutoTokenizer.from_pretrained``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, PAD_TOKEN, MASK_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(read_texts(files), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        mask_token=MASK_TOKEN,
        bos_token=None,
        model_max_length=4096,
    )
    fast.save_pretrained(str(out_dir))


def load_tokenizer(path: str | os.PathLike[str]):  # -> PreTrainedTokenizerFast
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def encode_files(tokenizer, files: Sequence[Path], batch: int = 256) -> np.ndarray:
    """Token stream [N] (uint16 when the vocabulary fits) of all files, each followed by eos."""
    eos = int(tokenizer.eos_token_id)
    chunks: list[np.ndarray] = []
    texts = list(read_texts(files))
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i : i + batch], add_special_tokens=False)["input_ids"]
        for ids in enc:
            chunks.append(np.asarray([*ids, eos], dtype=np.int64))
    stream = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    dtype = np.uint16 if len(tokenizer) <= 65535 else np.int32
    return stream.astype(dtype)


class TokenStream:
    """Random windows of ``length`` tokens from a 1-D token stream.

    Sampling is driven by an explicit ``torch.Generator`` so a resumed run draws the same
    windows as an uninterrupted one.
    """

    def __init__(self, tokens: np.ndarray | torch.Tensor) -> None:
        t = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
        if t.dim() != 1:
            raise ValueError(f"token stream must be 1-D, got shape {tuple(t.shape)}")
        self.tokens = t

    def __len__(self) -> int:
        return int(self.tokens.numel())

    def sample(self, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """[batch, length] windows at uniformly random offsets."""
        if len(self) < length:
            raise ValueError(f"stream of {len(self)} tokens is shorter than a window ({length})")
        starts = torch.randint(0, len(self) - length + 1, (batch,), generator=generator)
        idx = starts[:, None] + torch.arange(length)[None, :]
        return self.tokens[idx]

    def windows(self, length: int, stride: int | None = None) -> torch.Tensor:
        """All non-overlapping (or ``stride``-spaced) windows [n, length], in order."""
        stride = stride or length
        n = max(0, (len(self) - length) // stride + 1)
        idx = torch.arange(n)[:, None] * stride + torch.arange(length)[None, :]
        return self.tokens[idx]
