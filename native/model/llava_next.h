// LLaVA-NeXT ("llava-v1.6") anyres: the image is resized to the best-fitting grid pinpoint,
// padded, cut into vision-tower-sized tiles, and preceded by one base image resized to a single
// tile. The tower + projector run on every tile (LlavaModel::encode_images); the features are then
// packed as transformers' LlavaNextModel.pack_image_features does:
//
//   base tile features (n_patches rows), then the other tiles laid out spatially
//   ([grid_rows * side, grid_cols * side] feature map), unpadded to the original aspect ratio
//   (transformers' unpad_image: rows or columns cut symmetrically), with the learned
//   image_newline vector appended after each remaining row.
//
// The arithmetic follows transformers exactly (select_best_resolution's int() truncation,
// unpad_image's int(round(x, 7)) and floor-halved padding), so the token count equals what
// LlavaNextProcessor expands the <image> token to. Pure functions; no Node, no threads.
#pragma once
#include <atomic>
#include <cstdint>
#include <utility>
#include <vector>

namespace emollm {

class Backend;

class LlavaModel;

// transformers' select_best_resolution: the pinpoint ({height, width}) keeping the most of the
// original resolution after an aspect-preserving downscale, ties broken by the least waste.
std::pair<int64_t, int64_t> anyres_best_resolution(int64_t orig_h, int64_t orig_w,
                                                   const std::vector<std::pair<int64_t, int64_t>>& pinpoints);

struct AnyresLayout {
  int64_t grid_rows = 0, grid_cols = 0;  // tiles after the base image (grid_rows * grid_cols)
  int64_t side = 0;                      // feature rows/cols per tile (image_size / patch_size)
  int64_t row0 = 0, row1 = 0;            // kept feature rows [row0, row1) of the grid_rows*side map
  int64_t col0 = 0, col1 = 0;            // kept feature columns
  bool newline = true;                   // an image_newline after each kept row
  int64_t n_tiles() const { return 1 + grid_rows * grid_cols; }  // with the base image
  // Decoder positions: base tile + kept features + one newline per kept row.
  int64_t n_tokens() const {
    const int64_t rows = row1 - row0, cols = col1 - col0;
    return side * side + rows * cols + (newline ? rows : 0);
  }
};

// The layout for an original image of orig_h x orig_w pixels. tile_size: the tower's image_size;
// side: tile_size / patch_size. Throws InvalidArgument for non-positive sizes.
AnyresLayout anyres_layout(int64_t orig_h, int64_t orig_w, const std::vector<std::pair<int64_t, int64_t>>& pinpoints,
                           int64_t tile_size, int64_t side, bool newline = true);

// Packs projected tile features [n_tiles, side*side, E] (base first, then the grid row-major) into
// out [layout.n_tokens(), E]. newline: E floats (required when layout.newline).
// Host memory; the Backend overload does the same copies in the backend's memory.
void anyres_pack(const AnyresLayout& layout, const float* tile_features, int64_t E, const float* newline, float* out);
void anyres_pack(Backend& be, const AnyresLayout& layout, const float* tile_features, int64_t E, const float* newline,
                 float* out);

// Tower + projector over one image's tiles (pixels [layout.n_tiles(), C, S, S]) and the packing.
// out: [layout.n_tokens(), E] floats of the caller's (the addon passes a JavaScript result array,
// so no vector is filled and then copied). Returns false when aborted.
bool llava_next_encode_image(const LlavaModel& model, const float* pixels, const AnyresLayout& layout, float* out,
                             const std::atomic<bool>* abort = nullptr);
// The same into a vector, resized to [layout.n_tokens(), E].
bool llava_next_encode_image(const LlavaModel& model, const float* pixels, const AnyresLayout& layout,
                             std::vector<float>* out, const std::atomic<bool>* abort = nullptr);

}  // namespace emollm
