// Perspective "face-region": per face box (pixels of the tower input), the mean of the patch
// features the box overlaps, then linear_1 -> GELU -> linear_2, times the gate: one token per face
// (at most max_faces per image when set; zero faces, no tokens).
#include "model/emollm.h"
#include <algorithm>

#include "base/error.h"
#include "model/mvp_kind.h"

namespace emollm {
namespace {

void parse(const MvpParseContext& c, MvpPerspective& p) {
  if (p.gate != MvpGate::Closed) mvp_parse_mlp_weights(c, p);
}

int64_t tokens(const MvpPerspective& p, int64_t, int64_t n_faces) {
  return p.max_faces > 0 ? std::min(n_faces, p.max_faces) : n_faces;
}

DeviceTensor forward(const MvpForwardInput& in, const MvpPerspective& p, std::vector<int64_t>* counts) {
  Backend& be = in.be;
  EMOLLM_CHECK_ARG(in.model != nullptr, "face-region: this model has no face boxes");
  // Which patches each kept face covers: host work on the boxes, not on activations.
  std::vector<std::vector<int64_t>> kept;
  counts->assign(size_t(in.B), 0);
  std::vector<int64_t> image_of;
  for (int64_t b = 0; in.faces && b < in.B; ++b)
    for (const FaceBox& box : (*in.faces)[size_t(b)]) {
      if (p.max_faces > 0 && (*counts)[size_t(b)] >= p.max_faces) break;
      std::vector<int64_t> pt = in.model->face_patches(box);
      if (pt.empty()) continue;
      kept.push_back(std::move(pt));
      image_of.push_back(b);
      (*counts)[size_t(b)]++;
    }
  const int64_t rows = int64_t(kept.size());
  DeviceTensor pooled(be, DType::F32, {rows, p.d_in});
  for (int64_t f = 0; f < rows; ++f) {
    const int64_t base = image_of[size_t(f)] * in.T + (in.cls ? 1 : 0);
    const auto& pt = kept[size_t(f)];
    float* acc = pooled.row(f);
    be.copy(acc, in.x + (base + pt[0]) * p.d_in, size_t(p.d_in) * sizeof(float));
    for (size_t j = 1; j < pt.size(); ++j) be.add(acc, in.x + (base + pt[j]) * p.d_in, acc, p.d_in);
    be.scale(acc, 1.0f / float(pt.size()), acc, p.d_in);
  }
  DeviceTensor y(be, DType::F32, {rows, in.n_embd});
  mvp_run_mlp(be, p, pooled.data(), rows, in.n_embd, y.data());
  return y;
}

void info(const MvpPerspective& p, std::vector<std::pair<std::string, double>>* f) {
  if (p.max_faces > 0) f->emplace_back("maxFaces", double(p.max_faces));
}

}  // namespace

extern const MvpKind kMvpFaceRegion = {
    "face-region", "per face box, the mean of the patch features it covers, then an mlp",
    /*per_vision_token=*/false, /*layers_required=*/false, parse, tokens, forward, info};

}  // namespace emollm
