// SPDX-License-Identifier: Apache-2.0
// Example 02: plugging your own transformer into MegaContext. A model is any type that satisfies
// mc::BaseModel (model.hpp); here a toy "bigram" model (logits = embeddings · Eᵀ) is wrapped,
// checked with static_assert, fed a working context through mc::assemble, and trained-through
// with backward_inputs. The same generic code then runs the shipped reference Llama decoder.
// Walkthrough: docs/plug-in-your-model.md.
#include <megacontext/megacontext.hpp>
#include <megacontext/model.hpp>
#include <megacontext/reference/cross_entropy.hpp>
#include <megacontext/reference/llama.hpp>

#include <cstdio>
#include <vector>

// example-begin toy-model
/// A toy model: token embeddings from a table E [V, d], logits = embeddings · Eᵀ. It ignores
/// positions and the mask, which a real transformer would use.
class ToyModel {
 public:
  using Scalar = float;  // element type of embeddings and logits

  explicit ToyModel(mc::RowMatrix<float> table) : table_(std::move(table)) {}

  mc::ModelDims dims() const { return {table_.cols(), table_.rows()}; }
  std::int64_t dim() const { return table_.cols(); }

  /// out [n, d] = rows ids[0..n) of the table.
  void embed(const mc::TokenId* ids, std::int64_t n, float* out) const {
    for (std::int64_t i = 0; i < n; ++i)
      Eigen::Map<mc::RowMatrix<float>>(out + i * dim(), 1, dim()) = table_.row(ids[i]);
  }

  /// logits [n, V] = embeddings [n, d] · Eᵀ; positions [n] and mask [n, n] (nullptr = causal)
  /// are where a real model applies Gaussian RoPE and its attention mask.
  void forward(const float* embeddings, const mc::GaussianPosition* /*positions*/, std::int64_t n,
               const std::uint8_t* /*mask*/, float* logits) {
    Eigen::Map<mc::RowMatrix<float>>(logits, n, table_.rows()).noalias() =
        Eigen::Map<const mc::RowMatrix<float>>(embeddings, n, dim()) * table_.transpose();
  }

  /// Optional, for training GistNet: dembeddings [n, d] = dlogits [n, V] · E.
  void backward_inputs(const float* dlogits, std::int64_t n, float* dembeddings) const {
    Eigen::Map<mc::RowMatrix<float>>(dembeddings, n, dim()).noalias() =
        Eigen::Map<const mc::RowMatrix<float>>(dlogits, n, table_.rows()) * table_;
  }

  const mc::RowMatrix<float>& table() const { return table_; }

 private:
  mc::RowMatrix<float> table_;
};

static_assert(mc::BaseModel<ToyModel>, "ToyModel must satisfy mc::BaseModel");
static_assert(mc::model_traits<ToyModel>::has_backward, "ToyModel can train GistNet");
// example-end toy-model

using C = mc::Config<4, 2>;  // K = 4 tokens per gist, 2 gist levels

// example-begin generic-use
/// Generic code needs only the concept: assemble the working context with the model as the
/// token embedder, run the forward, score next-token NLL and send the gradient to the inputs.
template <class Model>
double run(Model& model, const mc::MemoryTree<C>& tree, const mc::WorkingContext<C>& wc,
           const std::vector<mc::TokenId>& next_tokens) {
  mc::expect_trainable_model<Model>();  // a sentence if Model lacks a part
  mc::AssembledContext<float> in;
  mc::assemble(wc, tree, model, in);  // tokens via model.embed, gists from the tree
  const std::int64_t n = in.embeddings.rows();
  mc::RowMatrix<float> logits(n, model.dims().n_vocab), dlogits;
  model.forward(in.embeddings.data(), in.positions.data(), n, nullptr, logits.data());
  const double nll = mc::reference::cross_entropy(logits, next_tokens.data(), &dlogits);
  mc::RowMatrix<float> dembeddings(n, model.dim());
  model.backward_inputs(dlogits.data(), n, dembeddings.data());  // would flow into the gists
  return nll;
}
// example-end generic-use

int main() {
  const std::int64_t vocab = 16, d = 8, num_tokens = 24;
  auto gister = mc::MeanPoolGister<C>::random(vocab, d, 7);  // gists = means of embeddings
  ToyModel toy(gister.table());                              // the model shares that table

  std::vector<mc::TokenId> ids;
  for (std::int64_t i = 0; i < num_tokens; ++i)
    ids.push_back(static_cast<mc::TokenId>((3 * i) % vocab));
  mc::MemoryTree<C> tree(d);
  tree.append(ids, gister);
  mc::WorkingContext<C> wc({64, 2});
  wc.extend(num_tokens, 16, 0);  // tokens before 16 enter as gists, the rest as tokens
  wc.validate(num_tokens);

  // Targets: the token that follows each entry's span (ignored for the last entry).
  std::vector<mc::TokenId> next(static_cast<std::size_t>(wc.size()), mc::reference::kIgnoreTarget);
  for (std::int64_t i = 0; i + 1 < wc.size(); ++i)
    next[static_cast<std::size_t>(i)] = ids[static_cast<std::size_t>(wc.span(i).end)];

  std::printf("working context: %lld entries for %lld tokens\n", static_cast<long long>(wc.size()),
              static_cast<long long>(num_tokens));
  std::printf("toy model NLL: %.4f nats\n", run(toy, tree, wc, next));

  mc::reference::LlamaOptions o;
  o.d_model = d;
  o.n_layers = 1;
  o.n_heads = 2;
  o.d_ff = 16;
  o.n_vocab = vocab;
  mc::reference::LlamaWeights<float> w = mc::reference::LlamaWeights<float>::random(o, 8);
  w.embedding = gister.table();  // same embedding space as the tree's gists
  mc::reference::LlamaModel<float> llama(o, std::move(w));
  std::printf("reference llama NLL: %.4f nats\n", run(llama, tree, wc, next));
  return 0;
}
