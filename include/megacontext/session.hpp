// SPDX-License-Identifier: Apache-2.0
// mc::Session: a frozen model with an unbounded history. The runtime loop is a composition of
// the parts, in this order:
//   ingest  -> Tree::append (ids; gists of every block the append completes, via the gister)
//           -> FocusAllocator::admit (new entries in, budget restored) -> assemble_patch
//   refocus -> FocusScorer::score (LensNet) -> FocusAllocator::step -> assemble_patch
//   decode  -> the model over the rows that changed (KV cache when the model has one) -> logits
// A refocus runs every `refocus_every` tokens (default K) and at the end of each ingest.
// Every event writes one telemetry record (telemetry.hpp) to the sink, as a JSON line.
// save() writes the session state beside a disk tree; Session::resume continues from it exactly.
// Works with any BaseModel; the model's embedding feeds the LOD0 rows, the tree's gists the rest.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <ostream>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "megacontext/assemble.hpp"
#include "megacontext/config.hpp"
#include "megacontext/error.hpp"
#include "megacontext/focus_allocator.hpp"
#include "megacontext/focus_scorer.hpp"
#include "megacontext/gister.hpp"
#include "megacontext/io/json.hpp"
#include "megacontext/model.hpp"
#include "megacontext/policies/budget_optimal.hpp"
#include "megacontext/sampling.hpp"
#include "megacontext/session_state.hpp"
#include "megacontext/telemetry.hpp"
#include "megacontext/tree.hpp"
#include "megacontext/working_context.hpp"

namespace mc {

/// Run-time options of a Session.
struct SessionOptions {
  WorkingContextOptions context{};                   ///< W_max and sink tokens
  FocusOptions focus{};                              ///< allocator rules
  std::int64_t refocus_every = 0;                    ///< tokens between refocuses; 0: K
  std::int64_t ingest_chunk = 4096;                  ///< tokens per tree append (and commit)
  SpreadPolicy spread = SpreadPolicy::kUniformSpan;  ///< σ of gist positions
  std::uint64_t seed = 0;                            ///< sampler seed

  /// Throws mc::Error naming the first bad field (context and focus options included).
  void validate(int k, int depth) const {
    context.validate();
    focus.validate(context, k, depth);
    MC_EXPECTS(refocus_every >= 0, Errc::kInvalidArgument,
               "[mc.session.bad_options] refocus_every = ", refocus_every, "; must be >= 0");
    MC_EXPECTS(ingest_chunk >= 1, Errc::kInvalidArgument,
               "[mc.session.bad_options] ingest_chunk = ", ingest_chunk, "; must be >= 1");
  }
};

namespace detail {

template <class M>
concept RewindableDecoder = model_traits<M>::has_decode && requires(M& m, std::int64_t n) {
  m.rewind_decode(n);
};

}  // namespace detail

/// A frozen model `M` over an unbounded history of Config C. Borrows the model, the gister
/// (which builds the tree's gists; its embedding dim must be the model's) and the scorer; owns
/// the tree, the working context and the allocator. P is a score-driven FocusPolicy or a
/// FocusLayoutPolicy (the baselines of docs/concepts/baselines.md; they ignore the scores).
/// Not thread-safe.
template <ConfigType C, BaseModel M, class G, class S, class P = BudgetOptimal,
          class Storage = MemoryStorage>
  requires FocusPolicy<P> || FocusLayoutPolicy<P, C>
class Session {
 public:
  using Scalar = typename C::Scalar;
  using TreeT = Tree<C, Storage>;
  static constexpr int K = C::K;

  static_assert(std::same_as<typename M::Scalar, Scalar>,
                "mc::Session: the model's Scalar must be the Config's Scalar");
  static_assert(Gister<G, C>, "mc::Session: G must satisfy mc::Gister<G, C> (see gister.hpp)");
  static_assert(FocusScorer<S, Scalar>,
                "mc::Session: S must satisfy mc::FocusScorer (see focus_scorer.hpp)");

  /// A session over `tree` (empty, or holding an earlier history that enters the working
  /// context as coarse gists). Throws mc::Error for bad options or mismatched widths.
  Session(M& model, G& gister, S& scorer, TreeT tree, const SessionOptions& opts,
          P policy = {})
      : Session(model, gister, scorer, std::move(tree), opts, std::move(policy), true) {}

  /// Reopens a session saved with save(): `tree` must be the tree it was saved beside (it may
  /// hold more tokens, e.g. appended after the save: they are admitted now). Throws
  /// FormatError for a damaged state file, kConfigMismatch for one of another Config or tree,
  /// and mc::Error ([mc.working_context.invariant]) when its entries do not fit the tree.
  static Session resume(M& model, G& gister, S& scorer, TreeT tree,
                        const std::filesystem::path& state_path, const SessionOptions& opts,
                        P policy = {}) {
    const SessionState st = SessionState::load(state_path);
    MC_EXPECTS(st.k == C::K && st.depth == C::Depth, Errc::kConfigMismatch,
               "[mc.session.config_mismatch] ", state_path.string(), " was written with K = ",
               st.k, ", Depth = ", st.depth, "; this session has K = ", C::K,
               ", Depth = ", C::Depth);
    MC_EXPECTS(st.tokens <= tree.num_tokens(), Errc::kConfigMismatch,
               "[mc.session.state_ahead] ", state_path.string(), " covers ", st.tokens,
               " tokens but the tree holds only ", tree.num_tokens(),
               "; it belongs to another tree");
    Session s(model, gister, scorer, std::move(tree), opts, std::move(policy), false);
    s.wc_ = WorkingContext<C>::from_state(s.opts_.context, st.entries, st.tokens, st.window_begin);
    s.wc_.validate(s.tree_.num_tokens());
    s.alloc_.resume_at(st.step);
    s.scores_ = st.scores;
    s.since_refocus_ = st.since_refocus;
    s.sampler_.restore(st.sampler);
    s.documents_ = st.documents;
    s.next_document_id_ = st.next_document_id;
    s.check_documents(state_path);
    assemble(s.wc_, s.tree_, *s.model_, s.ctx_, s.opts_.spread);
    if (s.tree_.num_tokens() > st.tokens) s.admit_history(s.tree_.num_tokens());
    return s;
  }

  Session(Session&&) noexcept = default;
  Session& operator=(Session&&) noexcept = default;

  /// Appends `ids` to the history (in chunks of ingest_chunk, each committed to the tree before
  /// the next) and refocuses at the end. Throws mc::Error ([mc.session.empty_input]) for no ids.
  void ingest(std::span<const TokenId> ids) {
    MC_EXPECTS(!ids.empty(), Errc::kInvalidArgument,
               "[mc.session.empty_input] ingest of an empty document (0 tokens)");
    for (std::size_t p = 0; p < ids.size(); p += static_cast<std::size_t>(opts_.ingest_chunk)) {
      const std::size_t len =
          std::min(ids.size() - p, static_cast<std::size_t>(opts_.ingest_chunk));
      append(ids.subspan(p, len));
    }
    refocus();
  }

  /// ingest() of `text` encoded by `tokenizer` (anything with encode(text, std::vector<TokenId>&)).
  /// Throws mc::Error ([mc.session.invalid_utf8]) naming the byte offset when `text` is not
  /// well-formed UTF-8, and [mc.session.empty_input] for empty text.
  template <class Tokenizer>
  void ingest_text(Tokenizer& tokenizer, std::string_view text) {
    const std::size_t bad = io::first_invalid_utf8(text);
    MC_EXPECTS(bad == std::string_view::npos, Errc::kInvalidArgument,
               "[mc.session.invalid_utf8] the text is not valid UTF-8 at byte offset ", bad,
               " (byte 0x", hex_byte(text, bad), ")");
    MC_EXPECTS(!text.empty(), Errc::kInvalidArgument,
               "[mc.session.empty_input] ingest of an empty document (0 bytes)");
    std::vector<TokenId> ids;
    tokenizer.encode(text, ids);
    ingest(ids);
  }

  /// ingest() of a document that keeps its identity: returns an id that replace_document()
  /// takes to swap the document's content later.
  std::int64_t add_document(std::span<const TokenId> ids) {
    const std::int64_t begin = tree_.num_tokens();
    ingest(ids);
    documents_.push_back({next_document_id_, begin, tree_.num_tokens()});
    return next_document_id_++;
  }

  /// Replaces the content of document `id` by `ids` (the "codebase as a living context" case:
  /// a file changed). The tree is cut at the document's first token and everything from there
  /// is appended again — the new content, then every later token (later documents, generated
  /// text) — so only gists whose span reaches past the document's start are rebuilt; the
  /// working context keeps its entries before that point and re-admits the rest. Later
  /// documents keep their ids and shift. Throws mc::Error ([mc.session.no_document]) for an
  /// unknown id and [mc.session.empty_input] for empty content.
  void replace_document(std::int64_t id, std::span<const TokenId> ids) {
    const auto it = std::find_if(documents_.begin(), documents_.end(),
                                 [id](const DocumentSpan& d) { return d.id == id; });
    MC_EXPECTS(it != documents_.end(), Errc::kInvalidArgument, "[mc.session.no_document] no "
               "document has id ", id, " (", documents_.size(), " documents in the history)");
    MC_EXPECTS(!ids.empty(), Errc::kInvalidArgument,
               "[mc.session.empty_input] replacement of document ", id, " is empty (0 tokens)");
    const std::int64_t cut = it->begin;
    const auto later = tree_.tokens(it->end, tree_.num_tokens());
    const std::vector<TokenId> tail(later.begin(), later.end());
    const std::int64_t shift = static_cast<std::int64_t>(ids.size()) - (it->end - it->begin);
    cut_history(cut);
    for (std::size_t p = 0; p < ids.size(); p += static_cast<std::size_t>(opts_.ingest_chunk))
      append(ids.subspan(p, std::min(ids.size() - p, static_cast<std::size_t>(opts_.ingest_chunk))));
    for (std::size_t p = 0; p < tail.size(); p += static_cast<std::size_t>(opts_.ingest_chunk))
      append(std::span(tail).subspan(p, std::min(tail.size() - p, static_cast<std::size_t>(opts_.ingest_chunk))));
    it->end += shift;
    for (auto d = it + 1; d != documents_.end(); ++d) {
      d->begin += shift;
      d->end += shift;
    }
    refocus();
  }

  /// The documents added with add_document, in history order.
  std::span<const DocumentSpan> documents() const { return documents_; }

  /// Scores the working context and lets the allocator refocus it now.
  void refocus() {
    TelemetryRecord rec;
    rec.event = "refocus";
    rec.entries_before = wc_.size();
    StageClock clock;
    scores_.resize(static_cast<std::size_t>(wc_.size()));
    (*scorer_).score(ctx_, static_cast<double>(wc_.num_tokens()), std::span<float>(scores_));
    rec.latency.score_us = clock.lap();
    rec.focus = alloc_.step(wc_, scores_);
    rec.latency.allocate_us = clock.lap();
    follow_patch();
    rec.latency.assemble_us = clock.lap();
    since_refocus_ = 0;
    emit(rec);
  }

  /// Logits [V] for the token after the newest one (runs the model over the rows that changed).
  std::span<const Scalar> next_logits() {
    if (!logits_valid_) run_model();
    return logits_;
  }

  /// Samples the next token from next_logits() under `sampling`.
  TokenId sample(const SamplingOptions& sampling) {
    return sampler_.sample(next_logits(), sampling);
  }

  /// Appends one token (e.g. a sampled one), refocusing when refocus_every tokens have passed.
  void push(TokenId id) {
    append(std::span<const TokenId>(&id, 1));
    if (since_refocus_ >= refocus_every()) refocus();
  }

  /// Generates up to `n` tokens (each sampled, then pushed into the history); stops after
  /// `stop` when it is >= 0. Returns the generated ids.
  std::vector<TokenId> generate(std::int64_t n, const SamplingOptions& sampling,
                                TokenId stop = -1) {
    MC_EXPECTS(n >= 0, Errc::kInvalidArgument, "[mc.session.bad_options] generate(n = ", n,
               "); n must be >= 0");
    MC_EXPECTS(tree_.num_tokens() > 0, Errc::kState,
               "[mc.session.empty_history] generate needs at least one ingested token");
    std::vector<TokenId> out;
    for (std::int64_t i = 0; i < n; ++i) {
      const TokenId t = sample(sampling);
      out.push_back(t);
      push(t);
      if (t == stop) break;
    }
    return out;
  }

  /// Saves the session state to `path` (atomically; the tree commits on every append already).
  void save(const std::filesystem::path& path) const {
    SessionState st;
    st.k = C::K;
    st.depth = C::Depth;
    st.tokens = wc_.num_tokens();
    st.window_begin = wc_.window_begin();
    st.step = alloc_.step_number();
    st.since_refocus = since_refocus_;
    st.entries.assign(wc_.entries().begin(), wc_.entries().end());
    st.scores = scores_;
    st.scores.resize(st.entries.size(), 0.0f);
    st.sampler = sampler_.state();
    st.documents = documents_;
    st.next_document_id = next_document_id_;
    st.save(path);
  }

  /// Writes one JSON line per event to `out` (nullptr: none). The stream must outlive its use.
  void set_telemetry(std::ostream* out) { telemetry_ = out; }

  /// The history.
  const TreeT& tree() const { return tree_; }
  /// The working context.
  const WorkingContext<C>& context() const { return wc_; }
  /// The model input of the working context.
  const AssembledContext<Scalar>& assembled() const { return ctx_; }
  /// The latest score of each entry (0 for entries that arrived after the last refocus).
  std::span<const float> scores() const { return scores_; }
  /// Totals over every event so far.
  const TelemetryTotals& totals() const { return totals_; }
  /// The options in force.
  const SessionOptions& options() const { return opts_; }
  /// The allocator's policy object (e.g. to hand a layout baseline its per-step inputs).
  P& policy() { return alloc_.policy(); }
  /// Tokens between refocuses.
  std::int64_t refocus_every() const { return opts_.refocus_every > 0 ? opts_.refocus_every : K; }

 private:
  Session(M& model, G& gister, S& scorer, TreeT tree, const SessionOptions& opts, P policy,
          bool admit)
      : model_(&model),
        gister_(&gister),
        scorer_(&scorer),
        tree_(std::move(tree)),
        opts_(checked(opts)),
        wc_(opts_.context),
        alloc_(opts_.focus, opts_.context, std::move(policy)),
        sampler_(opts_.seed) {
    const ModelDims dims = model.dims();
    dims.validate();
    MC_EXPECTS(static_cast<std::int64_t>(gister.dim()) == dims.d_model &&
                   tree_.dim() == dims.d_model,
               Errc::kInvalidArgument, "[mc.session.dim_mismatch] model d_model = ",
               dims.d_model, ", gister dim = ", gister.dim(), ", tree gist dim = ", tree_.dim(),
               "; all three must agree");
    ctx_.embeddings.resize(0, dims.d_model);
    if (admit && tree_.num_tokens() > 0) admit_history(tree_.num_tokens());
  }

  static const SessionOptions& checked(const SessionOptions& o) {
    o.validate(C::K, C::Depth);
    return o;
  }

  static std::string hex_byte(std::string_view s, std::size_t i) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    if (i >= s.size()) return "??";
    const auto c = static_cast<unsigned char>(s[i]);
    return {kHex[c >> 4], kHex[c & 15]};
  }

  // One chunk: tree append (gists included), admit, patch the assembled rows.
  void append(std::span<const TokenId> ids) {
    TelemetryRecord rec;
    rec.event = "ingest";
    rec.entries_before = wc_.size();
    StageClock clock;
    tree_.append(ids, *gister_);
    rec.latency.append_us = clock.lap();
    rec.focus = alloc_.admit(wc_, tree_.num_tokens(), scores_);
    rec.latency.admit_us = clock.lap();
    follow_patch();
    rec.latency.assemble_us = clock.lap();
    since_refocus_ += static_cast<std::int64_t>(ids.size());
    emit(rec);
  }

  // Cuts the history at token `cut`: the tree, and the working context down to its entries
  // that end by then (with their assembled rows, scores and model cache rows).
  void cut_history(std::int64_t cut) {
    tree_.truncate(cut);
    const auto entries = wc_.entries();
    std::size_t keep = 0;
    std::int64_t covered = 0;
    while (keep < entries.size() && Lod<C>::tokens(entries[keep].node()).end <= cut) {
      covered = Lod<C>::tokens(entries[keep].node()).end;
      ++keep;
    }
    const std::vector<WcEntry> kept(entries.begin(), entries.begin() + static_cast<std::ptrdiff_t>(keep));
    wc_ = WorkingContext<C>::from_state(opts_.context, kept, covered,
                                        std::min(wc_.window_begin(), covered));
    const auto rows = static_cast<Eigen::Index>(keep);
    ctx_.embeddings.conservativeResize(rows, Eigen::NoChange);
    ctx_.positions.resize(keep);
    ctx_.width.resize(keep);
    ctx_.lod.resize(keep);
    scores_.resize(keep);
    model_rows_ = std::min(model_rows_, static_cast<std::int64_t>(keep));
    logits_valid_ = false;
  }

  void check_documents(const std::filesystem::path& path) const {
    std::int64_t at = 0;
    for (const DocumentSpan& d : documents_) {
      if (!(d.begin >= at && d.end > d.begin && d.end <= tree_.num_tokens() && d.id >= 0 &&
            d.id < next_document_id_))
        throw FormatError(detail::concat("[mc.session.bad_state] ", path.string(), ": document ",
                                         d.id, " spans [", d.begin, ", ", d.end,
                                         "), which is not after the previous one and inside the ",
                                         tree_.num_tokens(), "-token tree"),
                          path.string());
      at = d.end;
    }
  }

  // Used when the tree already holds history the context does not cover yet.
  void admit_history(std::int64_t tokens) {
    TelemetryRecord rec;
    rec.event = "ingest";
    rec.entries_before = wc_.size();
    StageClock clock;
    rec.focus = alloc_.admit(wc_, tokens, scores_);
    rec.latency.admit_us = clock.lap();
    follow_patch();
    rec.latency.assemble_us = clock.lap();
    emit(rec);
  }

  // After an allocator call: brings the assembled rows and the scores up to date through the
  // patch, and keeps only the model rows whose prefix did not change.
  void follow_patch() {
    const WcPatch p = wc_.patch();
    if (ctx_.embeddings.rows() != p.old_size) {
      assemble(wc_, tree_, *model_, ctx_, opts_.spread);
    } else {
      assemble_patch(wc_, tree_, *model_, ctx_, opts_.spread);
    }
    std::vector<float> next(static_cast<std::size_t>(p.new_size), 0.0f);
    for (const auto& m : p.moves)
      for (std::int64_t k = 0; k < m.count; ++k)
        if (m.old_begin + k < static_cast<std::int64_t>(scores_.size()))
          next[static_cast<std::size_t>(m.new_begin + k)] =
              scores_[static_cast<std::size_t>(m.old_begin + k)];
    scores_ = std::move(next);
    // Rows [0, prefix) kept their entry and position, so the model's cache of them stays valid.
    std::int64_t prefix = 0;
    if (!p.moves.empty() && p.moves.front().old_begin == 0 && p.moves.front().new_begin == 0)
      prefix = p.moves.front().count;
    model_rows_ = std::min(model_rows_, prefix);
    logits_valid_ = false;
  }

  void run_model() {
    TelemetryRecord rec;
    rec.event = "decode";
    rec.entries_before = wc_.size();
    StageClock clock;
    const std::int64_t w = wc_.size(), v = model_->dims().n_vocab, d = model_->dims().d_model;
    MC_EXPECTS(w >= 1, Errc::kState,
               "[mc.session.empty_history] the model needs at least one ingested token");
    logits_.resize(static_cast<std::size_t>(v));
    if constexpr (model_traits<M>::has_decode) {
      if constexpr (detail::RewindableDecoder<M>) {
        if (!decode_started_) {
          model_->begin_decode(opts_.context.w_max);
          decode_started_ = true;
          model_rows_ = 0;
        }
        model_->rewind_decode(model_rows_);
      } else {
        model_->begin_decode(opts_.context.w_max);
        model_rows_ = 0;
      }
      for (std::int64_t i = model_rows_; i < w; ++i)
        model_->decode_step(ctx_.embeddings.data() + i * d,
                            ctx_.positions[static_cast<std::size_t>(i)], logits_.data());
      rec.model_rows = w - model_rows_;
      model_rows_ = w;
    } else if constexpr (model_traits<M>::has_forward_last) {
      model_->forward_last(ctx_.embeddings.data(), ctx_.positions.data(), w, logits_.data());
      rec.model_rows = w;
    } else {
      all_logits_.resize(static_cast<std::size_t>(w * v));
      model_->forward(ctx_.embeddings.data(), ctx_.positions.data(), w, nullptr,
                      all_logits_.data());
      std::copy_n(all_logits_.data() + (w - 1) * v, v, logits_.data());
      rec.model_rows = w;
    }
    rec.latency.forward_us = clock.lap();
    rec.focus.step = alloc_.step_number();
    rec.focus.size = w;
    rec.focus.w_max = opts_.context.w_max;
    rec.focus.budget_use = static_cast<double>(w) / static_cast<double>(opts_.context.w_max);
    logits_valid_ = true;
    emit(rec);
  }

  void emit(TelemetryRecord& rec) {
    rec.tokens = tree_.num_tokens();
    totals_.add(rec);
    if (telemetry_ != nullptr) *telemetry_ << to_json_line(rec) << '\n';
  }

  M* model_;
  G* gister_;
  S* scorer_;
  TreeT tree_;
  SessionOptions opts_;
  WorkingContext<C> wc_;
  FocusAllocator<C, P> alloc_;
  Sampler sampler_;
  AssembledContext<Scalar> ctx_;
  std::vector<float> scores_;
  std::vector<Scalar> logits_, all_logits_;
  std::int64_t model_rows_ = 0;  // leading context rows the model's KV cache holds
  bool decode_started_ = false;
  bool logits_valid_ = false;
  std::int64_t since_refocus_ = 0;
  std::ostream* telemetry_ = nullptr;
  std::vector<DocumentSpan> documents_;
  std::int64_t next_document_id_ = 0;
  TelemetryTotals totals_;
};

}  // namespace mc
