"""difftree_rt operations: torch-facing, registered with ``torch.library`` (schema + fake
implementation) so they work under ``torch.compile``. All validation happens in the C++ core;
these modules only allocate outputs and hand tensors over through DLPack.

One module per op family; importing this package registers every ``torch.ops.difftree`` op once
(``_custom.custom_op`` defines each op, its fake and its eager/compiled dispatch).

Vocabulary: B batch, L draft depth, K candidates per depth, V vocabulary, N tree capacity
(budget + 1), P path columns (L + 1).
"""

from __future__ import annotations

# Names outside ``__all__`` are still imported elsewhere (the policies' ops, the flagged and
# workspace variants, helpers the tests and the reference use): re-exported with ``as``.
from .._ext import dl as dl
from .._ext import ext as ext
from ..tree import MAX_BUDGET
from ._custom import TREE_FIELDS as _TREE_FIELDS  # noqa: F401
from .attention import tree_attention
from .attention import tree_attention_workspace_bytes as tree_attention_workspace_bytes
from .caddtree import caddtree_select_from_candidates as caddtree_select_from_candidates
from .d2sd import d2sd_boundaries, d2sd_select
from .ddtree import ddtree_select, ddtree_select_from_candidates
from .gated_delta import gdn_commit, gdn_conv, gdn_conv_commit, gdn_verify
from .kv import kv_commit
from .masks import tree_anc_dense as tree_anc_dense
from .masks import tree_attention_mask, tree_positions
from .presto import ngram_extend as ngram_extend
from .presto import ngram_update as ngram_update
from .presto import presto_select_from_candidates as presto_select_from_candidates
from .sampling import node_select
from .taps import taps_select as taps_select
from .topk import MIN_LOGPROB as MIN_LOGPROB
from .topk import topk_logprobs
from .topk import topk_logprobs_flagged as topk_logprobs_flagged
from .topk import topk_logprobs_num_splits as topk_logprobs_num_splits
from .topk import topk_logprobs_workspace_bytes as topk_logprobs_workspace_bytes
from .walk import WalkResult, tree_walk

__all__ = [
    "MAX_BUDGET",
    "WalkResult",
    "d2sd_boundaries",
    "d2sd_select",
    "ddtree_select",
    "ddtree_select_from_candidates",
    "gdn_commit",
    "gdn_conv",
    "gdn_conv_commit",
    "gdn_verify",
    "kv_commit",
    "node_select",
    "topk_logprobs",
    "tree_attention",
    "tree_attention_mask",
    "tree_positions",
    "tree_walk",
]
