// PRESTO (ALGORITHMS.md §7): best-first selection with path-dependent edge scores
//   e(t | u) = log q_d(t) + λ log p_a(t | path(u)) - log Z(u),
// where p_a is an interpolated n-gram prior over the committed stream and Z(u) renormalises the
// tilted draft distribution q · p_a^λ at parent u, so every edge score is <= 0 and path scores
// never increase (which the heap's exactness needs).
//
// The n-gram model is an open-addressing count table held in two caller-owned tensors
// (keys int64 [H] or [B, H], counts int32 alike; common/ngram_key.h has the layout). ngram_update
// and ngram_extend add newly committed tokens in place (incremental; nothing is rebuilt per
// round); ngram_extend also keeps each request's last order - 1 tokens (the selector's context).
//
// Prior (interpolated additive smoothing, from the uniform distribution up):
//   p_0(t) = 1 / V;  p_m(t | h_{m-1}) = (c(h, t) + α p_{m-1}(t)) / (c(h) + α),
// for m = 1..order, h the last m - 1 tokens of the path's context; an order whose context is
// unavailable (stream too short) or unseen (c(h) = 0) ends the recursion (a longer context of an
// unseen one is unseen too). λ = 0 uses e = log q exactly, i.e. DDTree.
//
// Normalisation: Z(u) = Σ_r q_r p_r^λ + max(0, 1 - Σ_r q_r) over the depth's K candidates r;
// tokens outside the pool are credited their largest possible tilt (p^λ <= 1), so Z(u) <= 1 and
// e <= 0 (clamped at 0 against rounding). Both sums run in the lane order of ngram::kSumLanes
// (the CUDA kernel's warp reduction), so the two paths round identically.
//
// Order (normative, the DDTree rule generalised): higher score, smaller depth, earlier parent,
// then the position in the parent's edge list, which is sorted by edge score descending, then
// candidate rank ascending. At λ = 0 that position is the rank, so the tree is DDTree's.
// Arithmetic is double, one operation per statement, in the reference's order; path scores are
// fp32(score(parent) + fp32(e)).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <vector>

#include "common/ngram_key.h"
#include "cpu/candidates.h"
#include "cpu/cpu_ops.h"
#include "cpu/policy_ops.h"
#include "dispatch/checks.h"

namespace difftree::cpu {
namespace {

using ngram::kContextTotal;
using ngram::kSumLanes;

// Key of (h[0..len), t) for a context held in an int32 array.
inline int64_t ngram_key(const int32_t* h, int64_t len, uint32_t t) {
  return ngram::key([h](int64_t i) { return h[i]; }, len, t);
}

// One request's table: row `row` of keys/counts [B, H], or the whole [H] table.
class CountTable {
 public:
  CountTable(const TensorView& keys, const TensorView& counts, int64_t row = 0) {
    const int64_t H = keys.shape[keys.ndim - 1];
    const int64_t r = keys.ndim == 2 ? row : 0;
    keys_ = keys.ptr<int64_t>() + r * H;
    counts_ = counts.ptr<int32_t>() + r * H;
    mask_ = static_cast<uint64_t>(H) - 1;
  }

  int32_t get(int64_t key) const { return ngram::lookup(keys_, counts_, mask_, key); }
  // Adds 1 to `key`; false when the table is full. `*fresh` counts newly occupied slots.
  bool add(int64_t key, int64_t* fresh) {
    uint64_t i = ngram::home_slot(key, mask_);
    for (uint64_t probes = 0; probes <= mask_; ++probes, i = (i + 1) & mask_) {
      if (keys_[i] == key) {
        ++counts_[i];
        return true;
      }
      if (keys_[i] == 0) {
        keys_[i] = key;
        counts_[i] = 1;
        ++*fresh;
        return true;
      }
    }
    return false;
  }

 private:
  int64_t* keys_;
  int32_t* counts_;
  uint64_t mask_;
};

// Adds the n-grams (lengths 1..order) ending at seq[j] for j in [from, T) to `table`; the
// context of an n-gram must be available (>= 0; unavailable entries sit on the left).
Status add_ngrams(CountTable& table, const int32_t* seq, int64_t from, int64_t T, int64_t order,
                  int64_t* fresh) {
  for (int64_t i = from; i < T; ++i) {
    for (int64_t m = 1; m <= order && i - m + 1 >= 0 && seq[i - m + 1] >= 0; ++m) {
      const int32_t* h = seq + (i - m + 1);
      if (!table.add(ngram_key(h, m - 1, static_cast<uint32_t>(seq[i])), fresh) ||
          !table.add(ngram_key(h, m - 1, kContextTotal), fresh))
        return InvalidValue(
            "keys: the n-gram table is full (size it for the stream: see "
            "difftree_rt.policies.NGramPrior / PrestoPolicy)");
    }
  }
  return Status::Ok();
}

struct EdgeList {
  std::vector<float> edge;    // sorted descending
  std::vector<int32_t> rank;  // candidate rank of each entry
};

struct Candidate {
  float score;
  int32_t depth;   // 1..L
  int32_t parent;  // node index
  int32_t pos;     // position in the parent's edge list
};

inline bool ranks_before(const Candidate& a, const Candidate& b) {
  if (a.score != b.score) return a.score > b.score;
  if (a.depth != b.depth) return a.depth < b.depth;
  if (a.parent != b.parent) return a.parent < b.parent;
  return a.pos < b.pos;
}

// Σ_r v[r] in the lane order of ngram::kSumLanes.
double lane_sum(const double* v, int64_t K) {
  std::array<double, kSumLanes> part{};
  for (int64_t r = 0; r < K; ++r) part[r % kSumLanes] = part[r % kSumLanes] + v[r];
  for (int o = kSumLanes / 2; o >= 1; o /= 2)
    for (int l = 0; l < o; ++l) part[l] = part[l] + part[l + o];
  return part[0];
}

// Edge scores of the K candidates given prior probabilities `p`; keeps the best `keep` entries
// sorted (edge score descending, rank ascending). A parent can receive at most the remaining
// budget of children, so entries past that are never read.
void make_edges(const float* lp, const double* p, int64_t K, double lam, int64_t keep,
                EdgeList* out, std::vector<float>& edge, std::vector<double>& lpa,
                std::vector<double>& w, std::vector<double>& q) {
  edge.resize(K);
  if (lam == 0.0) {
    for (int64_t r = 0; r < K; ++r) edge[r] = lp[r];
  } else {
    lpa.resize(K);
    w.resize(K);
    q.resize(K);
    for (int64_t r = 0; r < K; ++r) {
      q[r] = std::exp(static_cast<double>(lp[r]));
      lpa[r] = std::log(p[r]);
      const double tl = lam * lpa[r];
      w[r] = q[r] * std::exp(tl);
    }
    const double tilted = lane_sum(w.data(), K);
    const double mass = lane_sum(q.data(), K);
    const double rest = 1.0 - mass;
    const double z = rest > 0.0 ? tilted + rest : tilted;
    const double log_z = std::log(z);
    for (int64_t r = 0; r < K; ++r) {
      const double tl = lam * lpa[r];
      const double raw = static_cast<double>(lp[r]) + tl;
      const double e = raw - log_z;
      float ef = static_cast<float>(e);
      if (ef > 0.0f) ef = 0.0f;
      if (ef < kMinLogprob) ef = kMinLogprob;
      edge[r] = ef;
    }
  }
  const int64_t m = std::min(keep, K);
  out->rank.resize(K);
  for (int64_t r = 0; r < K; ++r) out->rank[r] = static_cast<int32_t>(r);
  // The order is total (ranks are distinct), so a partial sort gives the full sort's prefix.
  std::partial_sort(out->rank.begin(), out->rank.begin() + m, out->rank.end(),
                    [&](int32_t a, int32_t b) {
                      if (edge[a] != edge[b]) return edge[a] > edge[b];
                      return a < b;
                    });
  out->rank.resize(m);
  out->edge.resize(m);
  for (int64_t i = 0; i < m; ++i) out->edge[i] = edge[out->rank[i]];
}

Status token_error(const char* name, int64_t t, int64_t b, int64_t j, bool allow_missing) {
  std::ostringstream os;
  os << name << ": expected token ids in [0, 2^31)" << (allow_missing ? " or -1" : "") << ", found "
     << t << " at [" << b << ", " << j << "]";
  return InvalidValue(os.str());
}

}  // namespace

Status ngram_update(const TensorView& keys, const TensorView& counts, const TensorView& tokens,
                    int64_t start, int64_t order, int64_t* new_keys) {
  const int64_t T = tokens.shape[0];
  std::vector<int32_t> toks(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; ++i) {
    const int64_t t = checks::load_index(tokens, i);
    if (t < 0 || t > INT32_MAX) {
      std::ostringstream os;
      os << "tokens: expected token ids in [0, 2^31), found " << t << " at [" << i << "]";
      return InvalidValue(os.str());
    }
    toks[i] = static_cast<int32_t>(t);
  }
  CountTable table(keys, counts);
  int64_t fresh = 0;
  DIFFTREE_RETURN_IF_ERROR(add_ngrams(table, toks.data(), start, T, order, &fresh));
  *new_keys = fresh;
  return Status::Ok();
}

Status ngram_extend(const TensorView& keys, const TensorView& counts, const TensorView& history,
                    const TensorView& tokens, const TensorView& num_tokens, int64_t order) {
  const int64_t B = tokens.shape[0], T = tokens.shape[1], C = history.shape[1];
  std::vector<int32_t> seq;
  // Validate everything first: a bad row must leave every table and history untouched.
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = checks::load_index(num_tokens, b);
    if (n < 0 || n > T) {
      std::ostringstream os;
      os << "num_tokens: expected values in [0, " << T << "] (tokens.shape[1]), found " << n
         << " at [" << b << "]";
      return InvalidValue(os.str());
    }
    bool seen = false;
    for (int64_t j = 0; j < C; ++j) {
      const int64_t t = checks::load_index(history, b * C + j);
      if (t < -1 || t > INT32_MAX) return token_error("history", t, b, j, true);
      if (t < 0 && seen) {
        std::ostringstream os;
        os << "history: -1 (no token) may only pad the left of a row, found one after a token "
              "at ["
           << b << ", " << j << "]";
        return InvalidValue(os.str());
      }
      seen = seen || t >= 0;
    }
    for (int64_t j = 0; j < n; ++j) {
      const int64_t t = checks::load_index(tokens, b * T + j);
      if (t < 0 || t > INT32_MAX) return token_error("tokens", t, b, j, false);
    }
  }
  int64_t* hist = history.ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = checks::load_index(num_tokens, b);
    seq.resize(static_cast<size_t>(C + n));
    for (int64_t j = 0; j < C; ++j) seq[j] = static_cast<int32_t>(hist[b * C + j]);
    for (int64_t j = 0; j < n; ++j)
      seq[C + j] = static_cast<int32_t>(checks::load_index(tokens, b * T + j));
    CountTable table(keys, counts, b);
    int64_t fresh = 0;
    const Status st = add_ngrams(table, seq.data(), C, C + n, order, &fresh);
    if (!st.ok()) {
      std::ostringstream os;
      os << st.message() << " [request " << b << "]";
      return InvalidValue(os.str());
    }
    for (int64_t j = 0; j < C; ++j) hist[b * C + j] = seq[n + j];
  }
  return Status::Ok();
}

Status presto_select(const TensorView& cand_token, const TensorView& cand_logprob, int64_t budget,
                     const TensorView* root_token, const TensorView& context,
                     const TensorView& keys, const TensorView& counts, const PrestoParams& params,
                     const TreeView& tree) {
  const int64_t B = cand_logprob.shape[0], L = cand_logprob.shape[1], K = cand_logprob.shape[2];
  const int64_t N = budget + 1;
  const int64_t C = context.shape[1];  // history length kept per node (order - 1)
  const int64_t order = params.order;
  const double alpha = params.alpha, lam = params.lam;
  const double uniform = 1.0 / static_cast<double>(params.vocab);
  const float* lp = cand_logprob.ptr<const float>();
  TokenSet seen;
  std::vector<Candidate> heap;
  auto heap_cmp = [](const Candidate& a, const Candidate& b) { return ranks_before(b, a); };
  std::vector<double> p(static_cast<size_t>(K)), p1(static_cast<size_t>(L * K));
  std::vector<int32_t> hist;  // [N, C] per-node history, newest last, -1 = unavailable
  std::vector<EdgeList> lists;
  std::vector<int32_t> list_of;  // node -> index into lists (its children's edge list)
  std::vector<float> edge_buf;
  std::vector<double> lpa_buf, w_buf, q_buf;

  for (int64_t b = 0; b < B; ++b) {
    DIFFTREE_RETURN_IF_ERROR(check_candidates(cand_token, lp, b, L, K, seen));
    const CountTable table(keys, counts, b);
    auto lp_row = [&](int64_t d) { return lp + (b * L + d - 1) * K; };
    auto token_at = [&](int64_t d, int64_t r) {
      return static_cast<int32_t>(checks::load_index(cand_token, (b * L + d - 1) * K + r));
    };
    const int64_t root = root_token ? checks::load_index(*root_token, b) : -1;
    if (root_token && (root < 0 || root > INT32_MAX)) {
      std::ostringstream os;
      os << "root_token: expected token ids in [0, 2^31), found " << root << " at [" << b << "]";
      return InvalidValue(os.str());
    }
    hist.assign(static_cast<size_t>(N * C), -1);
    for (int64_t j = 0; j < C; ++j) {
      const int64_t t = checks::load_index(context, b * C + j);
      if (t < -1 || t > INT32_MAX) return token_error("context", t, b, j, true);
      hist[j] = static_cast<int32_t>(t);
    }
    auto edges = [&](const float* row, const double* prior, int64_t keep, EdgeList* out) {
      make_edges(row, prior, K, lam, keep, out, edge_buf, lpa_buf, w_buf, q_buf);
    };
    // Order-1 (unigram) prior of every candidate: its context is empty, so it is the same for
    // every parent at a depth. With no higher-order context seen, the whole edge list is too:
    // lists[d - 1] is that shared list of depth d.
    const double total = static_cast<double>(table.get(ngram_key(nullptr, 0, kContextTotal)));
    lists.assign(static_cast<size_t>(L), EdgeList{});
    for (int64_t d = 1; d <= L; ++d) {
      for (int64_t r = 0; r < K; ++r) {
        double q = uniform;
        if (order >= 1 && total > 0.0) {
          const uint32_t t = static_cast<uint32_t>(token_at(d, r));
          const double c_ht = static_cast<double>(table.get(ngram_key(nullptr, 0, t)));
          const double num = c_ht + alpha * q;
          const double den = total + alpha;
          q = num / den;
        }
        p1[(d - 1) * K + r] = q;
      }
      edges(lp_row(d), p1.data() + (d - 1) * K, N - 1, &lists[d - 1]);
    }
    list_of.assign(static_cast<size_t>(N), -1);

    // The edge list of node u's children (depth d + 1): shared unless a context of order >= 2
    // has been seen after u's path.
    int32_t n = 1;  // admitted nodes
    auto edges_for = [&](int32_t u, int64_t d) -> int32_t {
      const int32_t* h = hist.data() + static_cast<int64_t>(u) * C;
      const int64_t shared = d;  // lists[d] belongs to depth d + 1
      if (lam == 0.0 || order < 2 || total == 0.0) return static_cast<int32_t>(shared);
      // Which orders m >= 2 apply (available and seen)?
      int64_t top = 1;
      std::array<double, 9> ctx_count{};
      for (int64_t m = 2; m <= order; ++m) {
        const int64_t len = m - 1;
        if (len > C || h[C - len] < 0) break;
        const double ch =
            static_cast<double>(table.get(ngram_key(h + C - len, len, kContextTotal)));
        if (ch == 0.0) break;
        ctx_count[m] = ch;
        top = m;
      }
      if (top == 1) return static_cast<int32_t>(shared);
      for (int64_t r = 0; r < K; ++r) {
        const uint32_t t = static_cast<uint32_t>(token_at(d + 1, r));
        double q = p1[d * K + r];
        for (int64_t m = 2; m <= top; ++m) {
          const int64_t len = m - 1;
          const double c_ht = static_cast<double>(table.get(ngram_key(h + C - len, len, t)));
          const double num = c_ht + alpha * q;
          const double den = ctx_count[m] + alpha;
          q = num / den;
        }
        p[r] = q;
      }
      lists.emplace_back();
      edges(lp_row(d + 1), p.data(), N - n, &lists.back());
      return static_cast<int32_t>(lists.size() - 1);
    };
    int32_t* token = tree.token.ptr<int32_t>() + b * N;
    int32_t* parent = tree.parent.ptr<int32_t>() + b * N;
    int32_t* depth = tree.depth.ptr<int32_t>() + b * N;
    float* score = tree.score.ptr<float>() + b * N;
    token[0] = static_cast<int32_t>(root);
    parent[0] = -1;
    depth[0] = 0;
    score[0] = 0.0f;
    heap.clear();
    auto push_first_child = [&](int32_t u) {
      if (depth[u] >= L || K < 1 || n >= N) return;  // a leaf, or the tree is full
      list_of[u] = edges_for(u, depth[u]);
      const EdgeList& el = lists[list_of[u]];
      heap.push_back({score[u] + el.edge[0], depth[u] + 1, u, 0});
      std::push_heap(heap.begin(), heap.end(), heap_cmp);
    };
    push_first_child(0);
    while (n < N && !heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), heap_cmp);
      const Candidate c = heap.back();
      heap.pop_back();
      const EdgeList& el = lists[list_of[c.parent]];
      const int32_t i = n++;
      const int32_t tok = token_at(c.depth, el.rank[c.pos]);
      token[i] = tok;
      parent[i] = c.parent;
      depth[i] = c.depth;
      score[i] = c.score;
      int32_t* h = hist.data() + static_cast<int64_t>(i) * C;
      const int32_t* hp = hist.data() + static_cast<int64_t>(c.parent) * C;
      for (int64_t j = 0; j + 1 < C; ++j) h[j] = hp[j + 1];
      if (C > 0) h[C - 1] = tok;
      if (c.pos + 1 < static_cast<int32_t>(el.edge.size())) {
        heap.push_back({score[c.parent] + el.edge[c.pos + 1], c.depth, c.parent, c.pos + 1});
        std::push_heap(heap.begin(), heap.end(), heap_cmp);
      }
      push_first_child(i);
    }
    tree.num_nodes.ptr<int32_t>()[b] = n;
    finalize_tree(tree, b);
  }
  return Status::Ok();
}

}  // namespace difftree::cpu
