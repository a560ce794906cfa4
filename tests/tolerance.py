"""The suite's one float-tolerance rule (FA-style, as FlashAttention tests its kernels).

A result computed at some precision may differ from the exact value (the same computation in
fp64) by at most ``k`` times what the framework's own computation at that precision differs from
it, plus a floor of a few units in the last place of the exact value's magnitude:

    max|got - exact| <= k * max|framework_low - exact| + floor_ulps * eps(dtype) * max|exact|

The bound follows the machine's own rounding (a CPU whose kernels round differently widens the
framework's error and the bound with it), so no tolerance is a constant tuned on one CPU.
Discrete results (tokens, trees, accepted lengths) are never compared with a tolerance.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

K = 4.0
FLOOR_ULPS = 16.0


def fp64_copy(module: nn.Module) -> nn.Module:
    """An fp64 deep copy of ``module`` (the exact side of the rule); for a DFlash drafter, the
    target embedding and LM head it is bound to as well."""
    fp64 = copy.deepcopy(module).double()
    for bound in getattr(fp64, "_target_modules", None) or ():
        bound.double()
    # MoE experts: transformers' grouped-mm path has no fp64 kernel; the eager loop is exact.
    set_experts = getattr(fp64, "set_experts_implementation", None)
    if callable(set_experts) and getattr(fp64.config, "num_experts_per_tok", None):
        set_experts("eager")
    return fp64


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    """``max|a - b|`` in fp64 (0 for empty tensors)."""
    if a.numel() == 0:
        return 0.0
    return (a.double() - b.double().to(a.device)).abs().max().item()


def fa_bound(
    low: Tensor,
    exact: Tensor,
    *,
    k: float = K,
    floor_ulps: float = FLOOR_ULPS,
    floor: float | None = None,
) -> float:
    """The allowed ``max|got - exact|`` given the framework's own result ``low`` (any shape);
    ``floor`` (absolute) replaces the ulp floor where a test states its own."""
    if floor is None:
        eps = torch.finfo(low.dtype).eps if low.dtype.is_floating_point else 0.0
        scale = exact.double().abs().max().item() if exact.numel() else 0.0
        floor = floor_ulps * eps * max(scale, 1.0)
    return k * max_abs_diff(low, exact) + floor


def assert_fa_close(
    got: Tensor,
    low: Tensor,
    exact: Tensor,
    *,
    k: float = K,
    floor_ulps: float = FLOOR_ULPS,
    floor: float | None = None,
    what: str = "",
) -> None:
    """Assert the FA-style rule for ``got`` against ``exact`` (fp64, or higher precision than
    ``got``) and ``low``, the framework's own result at ``got``'s precision; one shape."""
    assert got.shape == low.shape == exact.shape, (what, got.shape, low.shape, exact.shape)
    err = max_abs_diff(got, exact)
    bound = fa_bound(low, exact, k=k, floor_ulps=floor_ulps, floor=floor)
    torch_err = max_abs_diff(low, exact)
    assert err <= bound, (
        f"{what}: max|got - exact| = {err:.3g} > bound {bound:.3g} "
        f"(the framework's own error {torch_err:.3g}, k = {k})"
    )


@dataclass(frozen=True)
class Ref:
    """A reference result twice: ``low`` as the framework computes it at the test's precision,
    ``exact`` the same computation in fp64. Indexing and :meth:`cat` act on both."""

    low: Tensor
    exact: Tensor

    def __getitem__(self, index: object) -> Ref:
        return Ref(self.low[index], self.exact[index])  # type: ignore[index]

    @staticmethod
    def cat(refs: Sequence[Ref], dim: int = 0) -> Ref:
        return Ref(torch.cat([r.low for r in refs], dim), torch.cat([r.exact for r in refs], dim))

    def check(self, got: Tensor, *, k: float = K, what: str = "") -> None:
        """``assert_fa_close(got, self.low, self.exact)``."""
        assert_fa_close(got, self.low, self.exact, k=k, what=what)
