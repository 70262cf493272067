// The splice rule (see image_splice.h).
#include "model/image_splice.h"

#include <string>

#include "base/error.h"
#include "model/llava.h"

namespace emollm {

SpliceForm splice_form(const ImageSplice& s, const int32_t* tokens, int64_t n) {
  SpliceForm f;
  for (int64_t c : s.counts) f.total += c;
  bool negative = false;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t t = tokens[i];
    if (t == s.image_token_id || t == s.video_token_id) ++f.marked;
    else if (t < 0) negative = true;
  }
  f.once = f.marked == int64_t(s.counts.size());
  f.expanded = f.marked == f.total;
  if (negative) return f;  // splice_prompt refuses the prompt
  if (f.once) f.length = n - f.marked + f.total;
  else if (f.expanded) f.length = n;
  return f;
}

std::vector<int32_t> splice_prompt(const ImageSplice& s, const int32_t* tokens, int64_t n, const float* features,
                                   int64_t E) {
  EMOLLM_CHECK_ARG(n >= 0 && (n == 0 || tokens != nullptr), "splice_prompt: no tokens");
  const std::vector<int64_t>& counts = s.counts;
  const int64_t n_images = int64_t(counts.size());
  for (int64_t c : counts) EMOLLM_CHECK_ARG(c >= 0, "splice_prompt: negative image token count");
  const SpliceForm f = splice_form(s, tokens, n);
  EMOLLM_CHECK_ARG(f.total == 0 || features != nullptr, "splice_prompt: images without features");
  const auto is_image = [&](int32_t t) { return t == s.image_token_id || t == s.video_token_id; };
  if (f.length < 0) {
    // splice_form gives -1 for a negative token id too: name it first
    for (int64_t i = 0; i < n; ++i)
      if (tokens[i] < 0 && !is_image(tokens[i]))
        throw Error(ErrorCode::InvalidArgument, "token id " + std::to_string(tokens[i]) + " (at index " +
                                                    std::to_string(i) + ") is negative");
    bool uniform = n_images > 0;  // every image the same count: name it per image
    for (int64_t c : counts) uniform = uniform && c == counts[0];
    throw Error(ErrorCode::InvalidArgument,
                "the prompt has " + std::to_string(f.marked) + " image tokens (id " + std::to_string(s.image_token_id) +
                    ") for " + std::to_string(n_images) + " image" + (n_images == 1 ? "" : "s") + ": expected " +
                    std::to_string(n_images) + " (one per image) or " + std::to_string(f.total) + " (" +
                    (uniform ? std::to_string(counts[0]) + " per image" : std::string("the images' token counts summed")) +
                    ")");
  }
  std::vector<std::vector<int32_t>> ids(static_cast<size_t>(n_images));
  int64_t off = 0;
  for (int64_t k = 0; k < n_images; ++k) {
    ids[size_t(k)] = image_pseudo_ids(features + off * E, counts[size_t(k)], E);
    off += counts[size_t(k)];
  }
  std::vector<int32_t> out;
  out.reserve(size_t(f.length));
  if (f.once) {
    int64_t k = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (!is_image(tokens[i])) out.push_back(tokens[i]);
      else {
        const auto& v = ids[size_t(k++)];
        out.insert(out.end(), v.begin(), v.end());
      }
    }
  } else {
    int64_t k = 0, j = 0;  // image k, its j-th token
    for (int64_t i = 0; i < n; ++i) {
      if (!is_image(tokens[i])) {
        out.push_back(tokens[i]);
        continue;
      }
      while (k < n_images && j >= counts[size_t(k)]) ++k, j = 0;
      out.push_back(ids[size_t(k)][size_t(j++)]);
    }
  }
  return out;
}

std::vector<int32_t> splice_prompt_counts(int32_t image_token_id, const int32_t* tokens, int64_t n, const float* features,
                                          int64_t E, const std::vector<int64_t>& counts) {
  return splice_prompt(ImageSplice{image_token_id, image_token_id, counts}, tokens, n, features, E);
}

}  // namespace emollm
