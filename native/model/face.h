// Face analysis networks of face-api (github.com/vladmandic/face-api, MIT; trained weights ship
// in the npm package @vladmandic/face-api, model/*.bin + *-weights_manifest.json):
//
//   TinyFaceDetector   a tiny-YOLOv2 with depthwise-separable convolutions: conv 3x3 (valid) +
//                      leaky ReLU, then 5 separable convs (depthwise 3x3 + pointwise + bias +
//                      leaky ReLU 0.1), 2x2 max pools ('same'; the last with stride 1), and a 1x1
//                      conv to a (size/32)^2 grid of 5 anchors x (x, y, w, h, objectness).
//   FaceExpressionNet  face-api's FaceFeatureExtractor (4 dense blocks of a strided conv and three
//                      depthwise-separable convs with residual sums and ReLU, 112 -> 7x7x256),
//                      7x7 average pool, fully connected 256 -> 7, softmax over
//                      neutral, happy, sad, angry, fearful, disgusted, surprised.
//
// Everything reproduces face-api's TensorFlow.js graph on image tensors (its Node path):
// preprocessing (pad to square with zeros, tf.image.resizeBilinear without align-corners or
// half-pixel centres, mean subtraction, / 255), the YOLO box decoding (sigmoid centre offsets,
// exp(w, h) x anchors, objectness sigmoid > threshold) and face-api's greedy IoU NMS, and the face
// crops of extractFaceTensors (box clipped to the image and floored, padded to a centred square,
// resized to 112). Weights are the dequantised f32 arrays of the manifests, by their manifest
// names (lib/face.ts loads and dequantises them).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "base/thread_pool.h"

namespace emollm::face {

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};
using WeightMap = std::map<std::string, Tensor>;

struct DetectOptions {
  int64_t input_size = 416;       // multiple of 32 in [64, 2048] (face-api: 128..608 typical)
  double score_threshold = 0.5;   // keep boxes with sigmoid(objectness) > this
  double iou_threshold = 0.4;     // NMS drops boxes with IoU > this against a kept box
};

// A face box in image pixels (top-left x, y), with the detector's score.
struct FaceBox {
  double x = 0, y = 0, width = 0, height = 0, score = 0;
};

constexpr int kNumExpressions = 7;
constexpr int kExpressionInputSize = 112;
extern const char* const kExpressionLabels[kNumExpressions];

// face-api's NetInput.toBatchTensor on an image tensor: the width x height RGB image (rows
// `stride` bytes apart) padded with zeros to a square (at the bottom / right, or centred when
// `center`: Math.round(diff / 2) after, the rest before), then resized to size x size with
// tf.image.resizeBilinear(alignCorners = false, halfPixelCenters = false) when the square's side
// differs. out: [size, size, 3] pixel values (0..255, f32).
void pad_to_square_resize(const uint8_t* rgb, int64_t stride, int64_t width, int64_t height, int64_t size,
                          bool center, float* out);

// face-api's extractFaceTensors + toBatchTensor(112, centred): the box clipped to the image and
// floored, cropped, padded to a centred square and resized. Returns false (out untouched) when
// the clipped box is empty (face-api skips such faces).
bool extract_face_crop(const uint8_t* rgb, int64_t width, int64_t height, const FaceBox& box, float* out);

class TinyFaceDetector {
 public:
  // Names as in tiny_face_detector_model-weights_manifest.json (conv0/filters, conv0/bias,
  // conv1..5/{depthwise_filter,pointwise_filter,bias}, conv8/filters, conv8/bias).
  explicit TinyFaceDetector(const WeightMap& weights);

  // The network on a preprocessed input [size, size, 3] of pixel values 0..255 (the mean
  // subtraction and / 255 happen here). Returns the raw output [g, g, 25], g = *grid = size / 32.
  std::vector<float> forward(const float* input, int64_t size, ThreadPool* pool, int64_t* grid) const;

  // Decodes a raw output grid into boxes for a width x height image (face-api's extractBoxes
  // and nonMaxSuppression), best first.
  static std::vector<FaceBox> decode(const float* out, int64_t grid, int64_t width, int64_t height,
                                     const DetectOptions& opt);

  // Full pipeline on an RGB image (width * 3 bytes per row).
  std::vector<FaceBox> detect(const uint8_t* rgb, int64_t width, int64_t height, const DetectOptions& opt,
                              ThreadPool* pool) const;

 private:
  struct Sep {
    int64_t c = 0, oc = 0;
    std::vector<float> dw, pw, bias;  // dw [3, 3, c], pw [oc, c], bias [oc]
  };
  std::vector<float> conv0_w_, conv0_b_;  // [3, 3, 3, 16], [16]
  Sep sep_[5];
  std::vector<float> conv8_w_, conv8_b_;  // [25, 512], [25]
  int64_t conv0_oc_ = 0, head_c_ = 0;
};

class FaceExpressionNet {
 public:
  // Names as in face_expression_model-weights_manifest.json (dense0..3/conv0..3/..., fc/weights,
  // fc/bias).
  explicit FaceExpressionNet(const WeightMap& weights);

  // crops: n x [112, 112, 3] pixel values 0..255 (see extract_face_crop); probs: n x 7.
  // Several faces run one per pool worker; a single face runs its layers on the pool.
  void forward(const float* crops, int64_t n, float* probs, ThreadPool* pool) const;

 private:
  void forward_one(const float* crop, float* probs, ThreadPool* pool) const;
  struct Sep {
    int64_t c = 0, oc = 0;
    std::vector<float> dw, pw, bias;
  };
  struct Dense {
    std::vector<float> conv0_w, conv0_b;  // dense0 only: [3, 3, 3, oc]
    Sep conv0;                            // dense1..3
    Sep conv[3];
    int64_t c = 0, oc = 0;
  };
  Dense dense_[4];
  std::vector<float> fc_w_, fc_b_;  // [7, 256], [7]
};

}  // namespace emollm::face
