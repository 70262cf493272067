// Each binding file registers its functions on the addon's exports.
#pragma once
#include <napi.h>

#include <cstddef>

namespace emollm::addon {
void register_loaders(Napi::Env env, Napi::Object exports);  // loaders_binding.cpp
void register_kernels(Napi::Env env, Napi::Object exports);  // kernels_binding.cpp
void register_model(Napi::Env env, Napi::Object exports);    // model_binding.cpp
void register_face(Napi::Env env, Napi::Object exports);     // face_binding.cpp
void register_train(Napi::Env env, Napi::Object exports);    // train_binding.cpp
void register_testing(Napi::Env env, Napi::Object exports);  // testing_binding.cpp (test hooks)
// The bytes readBandwidth's probe buffer holds now (kernels_binding.cpp; the testReadProbeHeldBytes hook).
size_t read_probe_held_bytes();
}  // namespace emollm::addon
