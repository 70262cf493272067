// How a multimodal prompt's image tokens become image rows: the one rule behind every splice
// (LLaVA, LLaVA-NeXT, EmoLLM, Qwen2-VL) and behind the length the addon computes before a splice
// runs, to size its result array on the JavaScript thread. Both call splice_form, so a length
// computed ahead and the splice that follows cannot disagree.
//
// Rule: the prompt's image positions (tokens equal to image_token_id or video_token_id) stand
// either once per image (each becomes its image's counts[k] rows) or already expanded (sum(counts)
// of them, in image order; the length stays). Anything else is an error naming the counts. When
// both readings fit (as many positions as images and as rows: one row an image, or counts such as
// {0, 2}), "once per image" wins: the length is the same either way, the rows go image by image.
#pragma once
#include <cstdint>
#include <vector>

namespace emollm {

// What a model's splice needs from its images (the models build it: LlavaModel::image_splice,
// EmollmModel::image_splice, Qwen2VLModel::image_splice).
struct ImageSplice {
  int32_t image_token_id = -1;
  // A second id that also marks image positions (Qwen2-VL's <|video_pad|>: video and image pads
  // are filled in prompt order alike); equal to image_token_id when the model has none.
  int32_t video_token_id = -1;
  std::vector<int64_t> counts;  // rows per image, in prompt order
};

// The prompt's image positions against the rule.
struct SpliceForm {
  int64_t marked = 0;      // image positions in the prompt
  int64_t total = 0;       // sum(counts)
  bool once = false;       // marked == counts.size(): each one becomes its image's rows
  bool expanded = false;   // marked == total: each one is one row already
  int64_t length = -1;     // the spliced prompt's length; -1 when neither (the splice throws)
};
SpliceForm splice_form(const ImageSplice& s, const int32_t* tokens, int64_t n);

// splice_form(...).length: what splice_prompt returns the size of, without hashing the features.
inline int64_t spliced_length(const ImageSplice& s, const int32_t* tokens, int64_t n) {
  return splice_form(s, tokens, n).length;
}

// The decoder prompt: image k's rows are rows [sum(counts[0..k)), + counts[k]) of `features`
// ([sum(counts), n_embd]); each image position becomes a pseudo-id, image_pseudo_ids() of its
// image's rows. Throws InvalidArgument naming the counts when splice_form's length is -1, or on a
// negative token id.
std::vector<int32_t> splice_prompt(const ImageSplice& s, const int32_t* tokens, int64_t n, const float* features,
                                   int64_t n_embd);

// splice_prompt with one image id and these counts (LLaVA-NeXT's and EmoLLM's form).
std::vector<int32_t> splice_prompt_counts(int32_t image_token_id, const int32_t* tokens, int64_t n, const float* features,
                                          int64_t n_embd, const std::vector<int64_t>& counts);

}  // namespace emollm
