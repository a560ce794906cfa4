"""The plain-PyTorch oracles: readable, slow, and the definition the C++ and CUDA paths must
match bit for bit. They take and return the same things as ``difftree_rt.ops``.

One module per family:

* :mod:`.topk` — ``topk_logprobs`` (and ``MIN_LOGPROB``);
* :mod:`.ddtree` — ``ddtree_select``, ``ddtree_select_from_candidates``, ``tree_from_parents``;
* :mod:`.walk` — ``tree_walk`` (and ``WalkResult``);
* :mod:`.kv_commit` — ``kv_commit`` (row loop) and ``kv_commit_reference`` (vectorised);
* :mod:`.sampling` — ``node_select`` (and its ``philox4x32_10``, ``gumbel_noise``);
* :mod:`.policies` — CaDDTree, PRESTO and the n-gram counts;
* :mod:`.taps` — the TAPS pool, selector and q_cond estimates;
* :mod:`.d2sd` — the D²SD boundaries and joint selection;
* :mod:`.attention` — ``tree_attention_reference`` (and ``anc_to_mask``).

The ops' names are re-exported here (``difftree_rt.reference.node_select``). The attribute
``kv_commit`` is the function; its module is reached by import
(``from difftree_rt.reference.kv_commit import kv_commit_reference``).

Layering: these modules import torch, numpy and ``difftree_rt.tree`` only, never the compiled
extension, ``ops``, the policies, the models or the engine (tests/test_reference_layering.py).
"""

from __future__ import annotations

from . import attention, d2sd, ddtree, policies, sampling, taps, topk, walk
from .ddtree import ddtree_select, ddtree_select_from_candidates, tree_from_parents
from .kv_commit import kv_commit, kv_commit_reference
from .sampling import gumbel_noise, node_select, philox4x32_10
from .topk import MIN_LOGPROB, topk_logprobs
from .walk import WalkResult, tree_walk

__all__ = [
    "MIN_LOGPROB",
    "WalkResult",
    "attention",
    "d2sd",
    "ddtree",
    "ddtree_select",
    "ddtree_select_from_candidates",
    "gumbel_noise",
    "kv_commit",
    "kv_commit_reference",
    "node_select",
    "philox4x32_10",
    "policies",
    "sampling",
    "taps",
    "topk",
    "topk_logprobs",
    "tree_from_parents",
    "tree_walk",
    "walk",
]
