"""Cost tables for CaDDTree (ALGORITHMS.md §5): profiled verify/draft costs, a monotone-convex
least-squares fit, interpolation in context (and batch), extrapolation in tree size.

Vocabulary: n draft nodes (a verify pass processes ``1 + n`` tokens, the root included), ctx the
committed context length, Bt batch size, N = max_budget + 1 rows of a verify-cost row.

``C_v(n; ctx, batch)``: per profiled (batch, ctx) the measured values over the profiled n are
replaced by their least-squares nondecreasing convex fit (a small QP solved exactly by
Lawson-Hanson NNLS over a hinge basis, see :func:`fit_monotone_convex`); between profiled n the
fit is linear, below the first profiled n it is held at the first value, above the last it
continues with the last slope. Between profiled contexts/batches it is linear, outside them it
is clamped. Every step preserves "nondecreasing and convex in n", so θ(n) is unimodal.
"""

from __future__ import annotations

import bisect
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._validate import check_path

__all__ = [
    "CostTable",
    "DeviceCosts",
    "default_cost_table",
    "fit_monotone_convex",
    "load_cost_table",
]

_FORMAT = "difftree_rt.cost_table/1"


def _nnls(a: np.ndarray, b: np.ndarray, max_iter: int = 500) -> np.ndarray:
    """Lawson-Hanson: argmin ||a x - b|| subject to x >= 0 (exact active-set method).

    Args:
        a: ``[m, k]`` float64. b: ``[m]`` float64.
    Returns:
        ``[k]`` float64.
    """
    m, k = a.shape
    x = np.zeros(k)
    passive = np.zeros(k, dtype=bool)
    scale = max(float(np.abs(a).max(initial=0.0)) * float(np.abs(b).max(initial=0.0)), 1e-300)
    tol = 1e-15 * scale * max(m, k)
    w = a.T @ (b - a @ x)
    for _ in range(max_iter):
        if passive.all() or not (np.where(passive, -np.inf, w) > tol).any():
            break
        passive[int(np.argmax(np.where(passive, -np.inf, w)))] = True
        while True:
            z = np.zeros(k)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                break
            bad = passive & (z <= 0)
            step = float(np.min(x[bad] / (x[bad] - z[bad])))
            x = x + step * (z - x)
            passive &= x > 1e-15 * max(1.0, float(np.abs(x).max()))
        x = z
        w = a.T @ (b - a @ x)
    return x


def fit_monotone_convex(x: Sequence[float], y: Sequence[float]) -> list[float]:
    """Least-squares nondecreasing convex fit of ``y`` over increasing ``x`` (any spacing).

    A nondecreasing convex sequence on the grid is exactly ``a + c_0 (x - x_0) +
    Σ_k c_k max(0, x - x_k)`` with ``c >= 0`` (slope ``c_0 >= 0``, slope increments ``c_k >= 0``
    at the interior knots), so the QP is an NNLS in ``c`` after projecting out the free intercept
    ``a``. Exact (to rounding) on input that is already nondecreasing and convex.

    Returns:
        the fitted values at ``x`` (same length).
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.ndim != 1 or xs.shape != ys.shape or len(xs) == 0:
        raise ValueError(f"x and y must be 1-D of equal nonzero length, got {xs.shape}, {ys.shape}")
    if not np.all(np.isfinite(ys)) or not np.all(np.isfinite(xs)):
        raise ValueError("x and y must be finite")
    if np.any(np.diff(xs) <= 0):
        raise ValueError(f"x must be strictly increasing, got {xs.tolist()}")
    m = len(xs)
    if m == 1:
        return ys.tolist()
    knots = xs[:-1]  # x_0 (the base slope) and the interior knots x_1 .. x_{m-2}
    basis = np.maximum(0.0, xs[:, None] - knots[None, :])  # [m, m-1]
    mean_b, mean_y = basis.mean(axis=0), ys.mean()
    a = basis - mean_b
    norm = np.linalg.norm(a, axis=0)
    norm[norm == 0] = 1.0
    c = _nnls(a / norm, ys - mean_y) / norm  # unit columns: better conditioned, same optimum
    intercept = mean_y - float(mean_b @ c)
    return (intercept + basis @ c).tolist()


def _interp_weights(grid: Sequence[int], value: float) -> tuple[int, int, float]:
    """Linear interpolation indices/weight on an increasing grid, clamped outside it."""
    if value <= grid[0]:
        return 0, 0, 0.0
    if value >= grid[-1]:
        j = len(grid) - 1
        return j, j, 0.0
    hi = bisect.bisect_right(grid, value)
    lo = hi - 1
    return lo, hi, (value - grid[lo]) / (grid[hi] - grid[lo])


@dataclass
class CostTable:
    """Measured verify and draft costs of one (model, device, dtype, attention path).

    Attributes:
        nodes: profiled n (draft nodes; verification of ``1 + n`` tokens), strictly increasing,
            ``>= 0``.
        contexts: profiled committed context lengths, strictly increasing.
        verify: raw measured ``C_v`` as ``[Bt][C][len(nodes)]`` nested lists (``unit``).
        draft: raw measured ``C_d`` as ``[Bt][C]``.
        batches: profiled batch sizes (``[1]`` when not profiled per batch).
        unit: cost unit ("ms", or "ar" for multiples of one AR step).
        meta: device, model, dtype, attention path, tool versions, date.
    """

    nodes: list[int]
    contexts: list[int]
    verify: list[list[list[float]]]
    draft: list[list[float]]
    batches: list[int] = field(default_factory=lambda: [1])
    unit: str = "ms"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("nodes", "contexts", "batches"):
            grid = getattr(self, name)
            if not grid or any(b <= a for a, b in zip(grid, grid[1:])):
                raise ValueError(f"{name} must be non-empty and strictly increasing, got {grid}")
        if self.nodes[0] < 0:
            raise ValueError(f"nodes must be >= 0, got {self.nodes}")
        nb, nc, nn = len(self.batches), len(self.contexts), len(self.nodes)
        v, d = _array("verify", self.verify), _array("draft", self.draft)
        if v.shape != (nb, nc, nn):
            raise ValueError(
                f"verify must be [batches={nb}][contexts={nc}][nodes={nn}], got {list(v.shape)}"
            )
        if d.shape != (nb, nc):
            raise ValueError(f"draft must be [batches={nb}][contexts={nc}], got {list(d.shape)}")
        if not (np.isfinite(v).all() and np.isfinite(d).all()) or (v < 0).any() or (d < 0).any():
            raise ValueError("costs must be finite and >= 0")
        # The fit, once: [Bt, C, nodes] nondecreasing convex in n.
        self._fit = np.array(
            [[fit_monotone_convex(self.nodes, row) for row in per_b] for per_b in v]
        ).reshape(nb, nc, nn)
        self._fit = np.maximum(self._fit, 0.0)
        self._rows: dict[int, np.ndarray] = {}

    # ---- evaluation ---------------------------------------------------------------------------
    def fitted(self) -> list[list[list[float]]]:
        """The fitted ``C_v`` at the profiled points, ``[Bt][C][nodes]``."""
        return self._fit.tolist()

    def _blend(self, values: np.ndarray, ctx: float, batch: float) -> np.ndarray:
        """``values [Bt, C, ...]`` interpolated at (batch, ctx) -> ``[...]``."""
        b0, b1, wb = _interp_weights(self.batches, batch)
        c0, c1, wc = _interp_weights(self.contexts, ctx)

        def at_b(b: int) -> np.ndarray:
            return (1.0 - wc) * values[b, c0] + wc * values[b, c1]

        return (1.0 - wb) * at_b(b0) + wb * at_b(b1)

    def grid_rows(self, max_nodes: int) -> np.ndarray:
        """``C_v(n)`` for ``n = 0..max_nodes`` at every profiled (batch, ctx): float64
        ``[Bt, C, max_nodes + 1]`` (the fit, linear between profiled n, held below the first,
        extended with the last slope above the last)."""
        cached = self._rows.get(max_nodes)
        if cached is not None:
            return cached
        xs = np.asarray(self.nodes, dtype=np.float64)
        n = np.arange(max_nodes + 1, dtype=np.float64)
        rows = np.empty((*self._fit.shape[:2], max_nodes + 1))
        for b in range(rows.shape[0]):
            for c in range(rows.shape[1]):
                fit = self._fit[b, c]
                out = np.interp(n, xs, fit)  # linear inside, held at the ends
                if len(xs) >= 2:
                    slope = (fit[-1] - fit[-2]) / (xs[-1] - xs[-2])
                    out = np.where(n > xs[-1], fit[-1] + slope * (n - xs[-1]), out)
                rows[b, c] = out
        self._rows[max_nodes] = rows
        return rows

    def verify_costs(self, max_nodes: int, ctx: int, batch: int = 1) -> np.ndarray:
        """``C_v(n; ctx, batch)`` for ``n = 0..max_nodes``: float64 ``[max_nodes + 1]``.

        The profiled grid rows (:meth:`grid_rows`) blended at (ctx, batch); the same arithmetic,
        op for op, as :class:`DeviceCosts` on device context lengths."""
        return self._blend(self.grid_rows(max_nodes), ctx, batch)

    def device_costs(
        self, max_nodes: int, batch: int = 1, device: torch.device | str = "cpu"
    ) -> DeviceCosts:
        """The cost rows at a fixed ``(max_nodes, batch)`` as device tensors, evaluated at
        device context lengths (graph mode: no host value per round)."""
        return DeviceCosts(self, max_nodes, batch, device)

    def verify_row(self, max_nodes: int, ctx: int, batch: int = 1) -> Tensor:
        """float32 ``[max_nodes + 1]``: the ``verify_cost`` row ``caddtree_select`` takes."""
        return torch.from_numpy(self.verify_costs(max_nodes, ctx, batch)).to(torch.float32)

    def draft_cost(self, ctx: int, batch: int = 1) -> float:
        """``C_d`` at (ctx, batch), interpolated and clamped like ``C_v``."""
        return float(self._blend(np.asarray(self.draft, dtype=np.float64), ctx, batch))

    def round_cost(self, n: int, ctx: int, batch: int = 1) -> float:
        """``C_d + C_v(n)``: the cost of one round verifying ``1 + n`` tokens."""
        return self.draft_cost(ctx, batch) + float(self.verify_costs(n, ctx, batch)[n])

    # ---- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "unit": self.unit,
            "nodes": list(self.nodes),
            "contexts": list(self.contexts),
            "batches": list(self.batches),
            "verify": self.verify,
            "draft": self.draft,
            "verify_fitted": self.fitted(),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CostTable:
        """A table from its parsed JSON (:meth:`to_dict`'s layout); ``ValueError`` naming the
        first field that is missing or of the wrong type or shape."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a cost table must be a JSON object, got {type(d).__name__}")
        if d.get("format") != _FORMAT:
            raise ValueError(f"not a cost table (format {d.get('format')!r}, want {_FORMAT!r})")
        for name in ("nodes", "contexts", "verify", "draft"):
            if name not in d:
                raise ValueError(f"cost table field {name!r} is missing")
        unit = d.get("unit", "ms")
        if not isinstance(unit, str):
            raise ValueError(f"cost table field 'unit' must be a string, got {unit!r}")
        meta = d.get("meta", {})
        if not isinstance(meta, Mapping):
            raise ValueError(f"cost table field 'meta' must be an object, got {meta!r}")
        return cls(
            nodes=_ints("nodes", d["nodes"]),
            contexts=_ints("contexts", d["contexts"]),
            verify=_numbers("verify", d["verify"], 3),
            draft=_numbers("draft", d["draft"], 2),
            batches=_ints("batches", d.get("batches", [1])),
            unit=unit,
            meta=dict(meta),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CostTable:
        """The table in the JSON file at ``path`` (``ValueError`` naming the path and the
        field when it is not valid JSON or not a cost table)."""
        path = check_path("path", path)
        with open(path, encoding="utf-8") as f:
            try:
                raw = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"cost table {path!r} is not valid JSON: {e}") from None
        try:
            return cls.from_dict(raw)
        except ValueError as e:
            raise ValueError(f"cost table {path!r}: {e}") from None


def _array(name: str, value: Any) -> np.ndarray:
    """Field ``name`` (nested lists of numbers) as a float64 array; ``ValueError`` naming it
    when it is ragged or holds a non-number."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be rectangular nested lists of numbers") from None


def _ints(name: str, value: Any) -> list[int]:
    """A JSON list of integers (no bools, no floats) of field ``name``."""
    if not isinstance(value, list) or any(
        isinstance(x, bool) or not isinstance(x, int) for x in value
    ):
        raise ValueError(f"cost table field {name!r} must be a list of integers, got {value!r}")
    return list(value)


def _numbers(name: str, value: Any, depth: int) -> list[Any]:
    """Nested JSON lists, ``depth`` deep, of numbers (no bools) of field ``name``, as floats."""
    if depth == 0:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"cost table field {name!r} holds a non-number {value!r}")
        return float(value)  # type: ignore[return-value]
    if not isinstance(value, list):
        raise ValueError(
            f"cost table field {name!r} must be {depth}-deep nested lists of numbers, got {value!r}"
        )
    return [_numbers(name, x, depth - 1) for x in value]


def load_cost_table(
    table: CostTable | Mapping[str, Any] | str | os.PathLike[str] | None,
    name: str = "cost_table",
) -> CostTable:
    """A table object, its parsed JSON (a dict), a JSON path, or None (the conservative
    default). Anything else (an int would be a file descriptor to ``open``) is a
    ``TypeError`` naming ``name``; a bad file or dict a ``ValueError`` naming the field."""
    if table is None:
        return default_cost_table()
    if isinstance(table, CostTable):
        return table
    if isinstance(table, Mapping):
        try:
            return CostTable.from_dict(table)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    if not isinstance(table, (str, os.PathLike)):
        raise TypeError(
            f"{name} must be a CostTable, a dict or a JSON path, got {type(table).__name__}"
        )
    return CostTable.load(check_path(name, table))


def default_cost_table() -> CostTable:
    """A conservative analytic table in units of one AR step at short context.

    ``C_v(n; ctx) = 1 + s(ctx) (n / 256 + (n / 1024)^2)`` with ``s(ctx) = 1 + ctx / 8192``, and
    ``C_d = 0.2``. A batch-1 target forward on a GPU is nearly flat for small n; this default
    charges every node from the start and grows quadratically, so without a profiled table
    CaDDTree errs toward smaller trees (it never grows a tree a real table would cut).
    """
    nodes = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    contexts = [0, 8192, 32768]
    verify = [
        [[1.0 + (1.0 + c / 8192) * (n / 256 + (n / 1024) ** 2) for n in nodes] for c in contexts]
    ]
    return CostTable(
        nodes=nodes,
        contexts=contexts,
        verify=verify,
        draft=[[0.2 for _ in contexts]],
        unit="ar",
        meta={"source": "analytic default (difftree_rt.policies.cost.default_cost_table)"},
    )


def theta(
    delta_scores: Sequence[float], verify_costs: Sequence[float], draft: float
) -> list[float]:
    """θ(n) for n = 0..len(delta_scores): ``(1 + Σ_{j<=n} exp(score_j)) / (C_d + C_v(n))``
    (a diagnostic; the selector's rule lives in the core and its reference)."""
    phi, out = 0.0, [1.0 / (draft + float(verify_costs[0]))]
    for j, s in enumerate(delta_scores, start=1):
        phi += math.exp(float(s))
        out.append((1.0 + phi) / (draft + float(verify_costs[j])))
    return out


class DeviceCosts:
    """A :class:`CostTable`'s ``verify_row`` / ``draft_cost`` at a fixed ``(max_nodes, batch)``,
    evaluated on the device for a ``[B]`` tensor of committed context lengths: no host read, so
    a CUDA graph can capture it. Bit-identical to the host methods: the batch weights are host
    constants, the context weights are computed with the same IEEE operations in float64 (an
    integer context and grid are exact in f64, so ``(ctx - lo) / (hi - lo)`` rounds once, as
    Python's int division does), then the same blend, op for op, and one rounding to float32.
    """

    def __init__(
        self, table: CostTable, max_nodes: int, batch: int = 1, device: torch.device | str = "cpu"
    ) -> None:
        f64 = dict(dtype=torch.float64, device=device)
        self.b0, self.b1, wb = _interp_weights(table.batches, batch)
        self.wb = wb
        self.rows = torch.tensor(table.grid_rows(max_nodes), **f64)  # [Bt, C, N]
        self.draft = torch.tensor(np.asarray(table.draft, dtype=np.float64), **f64)  # [Bt, C]
        self.grid = torch.tensor([float(c) for c in table.contexts], **f64)
        self.num_ctx = len(table.contexts)

    def _weights(self, ctx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``_interp_weights(contexts, ctx)`` per request: (lo, hi) int64 and wc float64."""
        x = ctx.to(self.grid.dtype)
        last = self.num_ctx - 1
        if last == 0:
            zero = torch.zeros_like(ctx, dtype=torch.long)
            return zero, zero, torch.zeros_like(x)
        hi = torch.searchsorted(self.grid, x, right=True).clamp(1, last)
        lo = hi - 1
        inside = (x > self.grid[0]) & (x < self.grid[last])
        wc = torch.where(inside, (x - self.grid[lo]) / (self.grid[hi] - self.grid[lo]), 0.0)
        at_end = x >= self.grid[last]
        lo = torch.where(inside, lo, torch.where(at_end, last, 0))
        hi = torch.where(inside, hi, torch.where(at_end, last, 0))
        return lo, hi, wc

    def _blend(self, values: Tensor, lo: Tensor, hi: Tensor, wc: Tensor) -> Tensor:
        """``CostTable._blend`` with per-request context weights: ``values [Bt, C, ...]`` ->
        ``[B, ...]``."""
        shape = (-1,) + (1,) * (values.dim() - 2)
        w = wc.reshape(shape)

        def at_b(b: int) -> Tensor:
            return (1.0 - w) * values[b][lo] + w * values[b][hi]

        return (1.0 - self.wb) * at_b(self.b0) + self.wb * at_b(self.b1)

    def at(self, ctx: Tensor) -> tuple[Tensor, Tensor]:
        """Costs at committed lengths ``ctx [B]`` (int, on the device): ``(verify_cost float32
        [B, max_nodes + 1], draft_cost float32 [B])``, as ``caddtree_select`` takes them."""
        lo, hi, wc = self._weights(ctx.clamp(min=0))
        verify = self._blend(self.rows, lo, hi, wc).to(torch.float32)
        draft = self._blend(self.draft, lo, hi, wc).to(torch.float32)
        return verify.contiguous(), draft.contiguous()
