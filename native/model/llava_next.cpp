// LLaVA-NeXT anyres layout and feature packing. See llava_next.h.
#include "model/llava_next.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "base/error.h"
#include "core/device_tensor.h"
#include "model/llava.h"

namespace emollm {

std::pair<int64_t, int64_t> anyres_best_resolution(int64_t orig_h, int64_t orig_w,
                                                   const std::vector<std::pair<int64_t, int64_t>>& pinpoints) {
  EMOLLM_CHECK_ARG(orig_h > 0 && orig_w > 0, "anyres: image size must be positive");
  EMOLLM_CHECK_ARG(!pinpoints.empty(), "anyres: no grid pinpoints");
  std::pair<int64_t, int64_t> best = pinpoints[0];
  int64_t max_effective = 0, min_wasted = INT64_MAX;
  for (const auto& [h, w] : pinpoints) {
    // Python: scale = min(width / original_width, height / original_height); int() truncation.
    const double scale = std::min(double(w) / double(orig_w), double(h) / double(orig_h));
    const int64_t dw = int64_t(double(orig_w) * scale), dh = int64_t(double(orig_h) * scale);
    const int64_t effective = std::min(dw * dh, orig_w * orig_h);
    const int64_t wasted = w * h - effective;
    if (effective > max_effective || (effective == max_effective && wasted < min_wasted)) {
      max_effective = effective;
      min_wasted = wasted;
      best = {h, w};
    }
  }
  return best;
}

namespace {
// Python's int(round(x, 7)) for the non-negative x of unpad_image.
int64_t int_round7(double x) { return int64_t(std::nearbyint(x * 1e7) / 1e7); }
}  // namespace

AnyresLayout anyres_layout(int64_t orig_h, int64_t orig_w, const std::vector<std::pair<int64_t, int64_t>>& pinpoints,
                           int64_t tile_size, int64_t side, bool newline) {
  EMOLLM_CHECK_ARG(tile_size > 0 && side > 0, "anyres: tile size must be positive");
  const auto [bh, bw] = anyres_best_resolution(orig_h, orig_w, pinpoints);
  AnyresLayout L;
  L.side = side;
  L.newline = newline;
  L.grid_rows = bh / tile_size;
  L.grid_cols = bw / tile_size;
  const int64_t cur_h = L.grid_rows * side, cur_w = L.grid_cols * side;
  L.row0 = 0; L.row1 = cur_h; L.col0 = 0; L.col1 = cur_w;
  // unpad_image: compare aspect ratios (width / height) in floating point as Python does.
  const double orig_aspect = double(orig_w) / double(orig_h), cur_aspect = double(cur_w) / double(cur_h);
  if (orig_aspect > cur_aspect) {
    const int64_t new_h = int_round7(double(orig_h) * (double(cur_w) / double(orig_w)));
    const int64_t pad = (cur_h - new_h) / 2;  // floor: cur_h >= new_h
    L.row0 = pad;
    L.row1 = std::max(pad, cur_h - pad);
  } else {
    const int64_t new_w = int_round7(double(orig_w) * (double(cur_h) / double(orig_h)));
    const int64_t pad = (cur_w - new_w) / 2;
    L.col0 = pad;
    L.col1 = std::max(pad, cur_w - pad);
  }
  return L;
}

namespace {
// Walks the packed order, calling copy(dst_row, src, n_rows) for each run of rows that are
// contiguous in the source (a tile's base image; a row of patches inside one grid tile) and for
// each newline (src = newline, 1 row). One walk for the host and the backend versions.
template <class Copy>
void anyres_walk(const AnyresLayout& L, const float* tile, int64_t E, const float* newline, const Copy& copy) {
  EMOLLM_CHECK_ARG(!L.newline || newline != nullptr, "anyres_pack: the layout wants image_newline but none was given");
  const int64_t s = L.side, per_tile = s * s;
  copy(int64_t(0), tile, per_tile);  // base image first
  int64_t o = per_tile;
  const float* grid = tile + per_tile * E;
  for (int64_t r = L.row0; r < L.row1; ++r) {
    const int64_t tr = r / s, pr = r % s;  // tile row, patch row inside the tile
    for (int64_t c = L.col0; c < L.col1;) {
      const int64_t tc = c / s, pc = c % s, n = std::min(L.col1 - c, s - pc);  // to the end of this tile's row
      copy(o, grid + ((tr * L.grid_cols + tc) * per_tile + pr * s + pc) * E, n);
      o += n;
      c += n;
    }
    if (L.newline) copy(o++, newline, int64_t(1));
  }
}
}  // namespace

void anyres_pack(const AnyresLayout& L, const float* tile, int64_t E, const float* newline, float* out) {
  anyres_walk(L, tile, E, newline, [&](int64_t dst_row, const float* src, int64_t n) {
    std::memcpy(out + dst_row * E, src, size_t(n * E) * sizeof(float));
  });
}

void anyres_pack(Backend& be, const AnyresLayout& L, const float* tile, int64_t E, const float* newline, float* out) {
  anyres_walk(L, tile, E, newline, [&](int64_t dst_row, const float* src, int64_t n) {
    be.copy(out + dst_row * E, src, size_t(n * E) * sizeof(float));
  });
}

bool llava_next_encode_image(const LlavaModel& model, const float* pixels, const AnyresLayout& L, float* out,
                             const std::atomic<bool>* abort) {
  const int64_t E = model.n_embd(), per = model.n_image_tokens();
  if (per != L.side * L.side)
    throw Error(ErrorCode::InvalidArgument, "anyres: the tower gives " + std::to_string(per) + " features per tile, the layout expects " +
                                                std::to_string(L.side * L.side));
  Backend& be = model.text_model()->backend();
  DeviceTensor tiles(be, DType::F32, {L.n_tiles() * per, E});
  if (!model.encode_images_device(pixels, L.n_tiles(), tiles.data(), abort)) return false;
  DeviceTensor packed = DeviceTensor::output(be, out, L.n_tokens(), E);
  anyres_pack(be, L, tiles.data(), E, model.image_newline_device(), packed.data());
  packed.to_host(out);
  return true;
}

bool llava_next_encode_image(const LlavaModel& model, const float* pixels, const AnyresLayout& L, std::vector<float>* out,
                             const std::atomic<bool>* abort) {
  out->resize(size_t(L.n_tokens() * model.n_embd()));
  return llava_next_encode_image(model, pixels, L, out->data(), abort);
}

}  // namespace emollm
