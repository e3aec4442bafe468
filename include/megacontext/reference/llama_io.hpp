// SPDX-License-Identifier: Apache-2.0
// The reference decoder as a self-describing safetensors file: the weights (F32, F16 or BF16)
// plus the options in the metadata, so that a program opens a model by path alone. Training
// checkpoints (train/checkpoint.hpp) hold the same tensor names and metadata keys, so a
// checkpoint opens as a model too. The bundled model in examples/models/ is such a file.
#pragma once

#include <cstdio>
#include <filesystem>
#include <map>
#include <string>

#include "megacontext/error.hpp"
#include "megacontext/io/safetensors.hpp"
#include "megacontext/reference/llama.hpp"
#include "megacontext/train/checkpoint.hpp"

namespace mc::reference {

/// The options as metadata entries (d_model, n_layers, n_heads, d_ff, n_vocab, rope_base,
/// norm_eps).
inline std::map<std::string, std::string> llama_metadata(const LlamaOptions& o) {
  auto real = [](double x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.17g", x);
    return std::string(buf);
  };
  return {{"d_model", std::to_string(o.d_model)}, {"n_layers", std::to_string(o.n_layers)},
          {"n_heads", std::to_string(o.n_heads)}, {"d_ff", std::to_string(o.d_ff)},
          {"n_vocab", std::to_string(o.n_vocab)}, {"rope_base", real(o.rope_base)},
          {"norm_eps", real(o.norm_eps)}};
}

/// Options read back from metadata written by llama_metadata (rope_base and norm_eps default
/// when absent, as in older checkpoints). Throws FormatError ([mc.llama.bad_metadata]) naming a
/// missing or malformed entry, and mc::Error ([mc.llama.bad_options]) for values out of range.
inline LlamaOptions llama_options_from(const std::map<std::string, std::string>& meta,
                                       const std::filesystem::path& path) {
  auto get = [&](const char* key, bool required) -> const std::string* {
    const auto it = meta.find(key);
    if (it != meta.end()) return &it->second;
    if (required)
      throw FormatError(mc::detail::concat("[mc.llama.bad_metadata] ", path.string(),
                                       " has no metadata entry \"", key,
                                       "\"; is it a MegaContext reference-decoder file?"),
                        path);
    return nullptr;
  };
  auto number = [&](const char* key, const std::string& s) {
    std::size_t used = 0;
    double x = 0;
    try {
      x = std::stod(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != s.size())
      throw FormatError(mc::detail::concat("[mc.llama.bad_metadata] ", path.string(), ": \"", key,
                                       "\" = \"", s, "\" is not a number"),
                        path);
    return x;
  };
  LlamaOptions o;
  auto integer = [&](const char* key) {
    const double x = number(key, *get(key, true));
    if (x != static_cast<double>(static_cast<std::int64_t>(x)))
      throw FormatError(mc::detail::concat("[mc.llama.bad_metadata] ", path.string(), ": \"", key,
                                       "\" = ", x, " is not an integer"),
                        path);
    return static_cast<std::int64_t>(x);
  };
  o.d_model = integer("d_model");
  o.n_layers = integer("n_layers");
  o.n_heads = integer("n_heads");
  o.d_ff = integer("d_ff");
  o.n_vocab = integer("n_vocab");
  if (const std::string* s = get("rope_base", false)) o.rope_base = number("rope_base", *s);
  if (const std::string* s = get("norm_eps", false)) o.norm_eps = number("norm_eps", *s);
  o.validate();
  return o;
}

/// Writes `model` to `path` atomically: every weight as `dtype` (F32, F16 or BF16, rounded to
/// nearest even) under its for_each_parameter name and shape, the options and `extra` as
/// metadata.
template <class Scalar>
void save_llama(const std::filesystem::path& path, const LlamaModel<Scalar>& model,
                io::TensorDtype dtype = io::TensorDtype::kF32,
                const std::map<std::string, std::string>& extra = {}) {
  io::SafetensorsWriter w;
  for (const auto& [k, v] : llama_metadata(model.options())) w.set_metadata(k, v);
  for (const auto& [k, v] : extra) w.set_metadata(k, v);
  LlamaWeights<Scalar> copy = model.weights();
  std::vector<float> buf;
  const std::int64_t d = model.options().d_model;
  copy.for_each_parameter([&](const std::string& name, Scalar* p, Eigen::Index size) {
    buf.assign(p, p + size);
    const auto n = static_cast<std::int64_t>(size);
    // Matrices keep their rows; vectors stay 1-D (the loader only needs the element count).
    std::vector<std::int64_t> shape = {n};
    if (name == "embedding") shape = {n / d, d};
    else if (name.ends_with(".w2")) shape = {n / d, d};
    else if (name.ends_with(".w1") || name.ends_with(".w3") || name.find(".attn.w") != std::string::npos)
      shape = {d, n / d};
    w.add(name, std::move(shape), buf, dtype);
  });
  w.write(path);
}

/// Opens the model file at `path` (or a training checkpoint). Throws IoError
/// ([mc.llama.missing_file]) when there is no file, FormatError for a damaged one or missing
/// metadata, and mc::Error ([mc.train.missing_tensor] / [mc.train.shape_mismatch]) naming a
/// tensor that does not fit the options.
inline LlamaModel<float> load_llama(const std::filesystem::path& path) {
  if (!std::filesystem::is_regular_file(path))
    throw IoError("[mc.llama.missing_file] no model file at " + path.string() +
                      " (give the path of a .safetensors file written by save_llama or "
                      "mc_train_base)",
                  path);
  const auto file = io::SafetensorsFile::open(path);
  const LlamaOptions o = llama_options_from(file.metadata(), path);
  auto weights = LlamaWeights<float>::zeros(o);
  train::load_checkpoint<float>(path, weights, nullptr);
  return LlamaModel<float>(o, std::move(weights));
}

}  // namespace mc::reference
