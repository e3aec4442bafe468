// SPDX-License-Identifier: Apache-2.0
// Training checkpoints as safetensors: the parameters (tensor "<name>", F32), the AdamW moments
// ("adamw.m.<name>", "adamw.v.<name>", F64 as kept) and the step plus user metadata in
// __metadata__. Written atomically (temp file + rename), so an interrupted run resumes from the
// last complete checkpoint; loading names every missing or mismatched tensor.
#pragma once

#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "megacontext/error.hpp"
#include "megacontext/io/safetensors.hpp"
#include "megacontext/train/adamw.hpp"
#include "megacontext/train/parameters.hpp"

namespace mc::train {

/// Writes `params` (as F32), the optimizer state when `opt` is non-null, and `metadata` plus
/// "step" to `path` atomically.
template <class Scalar, ParameterSet<Scalar> P>
void save_checkpoint(const std::filesystem::path& path, P& params, const AdamW* opt,
                     const std::map<std::string, std::string>& metadata = {}) {
  io::SafetensorsWriter w;
  for (const auto& [k, v] : metadata) w.set_metadata(k, v);
  w.set_metadata("step", std::to_string(opt ? opt->step_count() : 0));
  std::vector<float> buf;
  params.for_each_parameter([&](const std::string& name, Scalar* p, Eigen::Index size) {
    buf.assign(p, p + size);
    w.add(name, {static_cast<std::int64_t>(size)}, buf);
    if (!opt) return;
    const auto it = opt->state().find(name);
    if (it == opt->state().end()) return;  // never stepped: nothing to save
    const auto add_f64 = [&](const std::string& key, const std::vector<double>& x) {
      w.add_raw(key, io::TensorDtype::kF64, {static_cast<std::int64_t>(x.size())},
                std::as_bytes(std::span<const double>(x)));
    };
    add_f64("adamw.m." + name, it->second.m);
    add_f64("adamw.v." + name, it->second.v);
  });
  w.write(path);
}

/// What load_checkpoint found besides the tensors.
struct CheckpointInfo {
  std::int64_t step = 0;                           ///< optimizer steps at save time
  std::map<std::string, std::string> metadata;     ///< all metadata, "step" included
};

/// Reads `path` into `params` (and the optimizer state into `opt` when non-null). Throws
/// mc::Error "[mc.train.missing_tensor]" / "[mc.train.shape_mismatch]" naming the tensor when the
/// checkpoint does not fit the model; nothing is modified unless everything fits.
template <class Scalar, ParameterSet<Scalar> P>
CheckpointInfo load_checkpoint(const std::filesystem::path& path, P& params, AdamW* opt) {
  const auto file = io::SafetensorsFile::open(path);
  CheckpointInfo info;
  info.metadata = file.metadata();
  if (const auto it = info.metadata.find("step"); it != info.metadata.end()) {
    try {
      info.step = std::stoll(it->second);
    } catch (const std::exception&) {
      throw FormatError("[mc.train.bad_step] checkpoint metadata step = '" + it->second +
                            "' is not an integer in " + path.string(),
                        path);
    }
  }
  // Check everything first, then copy: a mismatch leaves the model untouched.
  const auto check = [&](const std::string& key, Eigen::Index size) {
    MC_EXPECTS(file.contains(key), Errc::kConfigMismatch, "[mc.train.missing_tensor] ",
               path.string(), " has no tensor '", key, "'");
    const auto n = file.info(key).numel();
    MC_EXPECTS(static_cast<std::int64_t>(n) == static_cast<std::int64_t>(size), Errc::kConfigMismatch,
               "[mc.train.shape_mismatch] '", key, "' has ", n, " values in ", path.string(),
               ", the model has ", size);
  };
  bool has_moments = opt != nullptr;
  params.for_each_parameter([&](const std::string& name, Scalar*, Eigen::Index size) {
    check(name, size);
    if (opt && !file.contains("adamw.m." + name)) has_moments = false;
  });
  MC_EXPECTS(!opt || has_moments || info.step == 0, Errc::kConfigMismatch,
             "[mc.train.missing_tensor] ", path.string(), " was saved at step ", info.step,
             " without optimizer moments for every parameter");
  std::map<std::string, AdamW::Moments> state;
  params.for_each_parameter([&](const std::string& name, Scalar* p, Eigen::Index size) {
    const auto m = file.as_f32(name);
    for (Eigen::Index k = 0; k < size; ++k) p[k] = static_cast<Scalar>(m.data()[k]);
    if (!opt || !has_moments) return;
    auto& st = state[name];
    for (auto [key, out] : {std::pair{"adamw.m." + name, &st.m}, std::pair{"adamw.v." + name, &st.v}}) {
      check(key, size);
      MC_EXPECTS(file.info(key).dtype == io::TensorDtype::kF64, Errc::kFormat,
                 "[mc.train.bad_moment] '", key, "' is ", io::to_string(file.info(key).dtype),
                 ", expected F64");
      const auto bytes = file.raw(key);
      out->resize(static_cast<std::size_t>(size));
      std::memcpy(out->data(), bytes.data(), bytes.size());
    }
  });
  if (opt) opt->restore(std::move(state), info.step);
  return info;
}

}  // namespace mc::train
