# Cross-compiling for linux-arm64 musl on a glibc x64 host: Debian's clang-19 compiles against Zig's
# musl and libc++ headers and Zig links (libc++ and musl linked statically: executables are static
# and run under qemu-user as they are). The compiler wrappers are written by
# scripts/musl-toolchain.mjs into the folder named by the environment variable EMOLLM_MUSL_BIN
# (an environment variable, so that CMake's try_compile projects see it too):
#   EMOLLM_MUSL_BIN=/tmp/x/bin cmake -S . -B build-arm64-musl --toolchain cmake/toolchains/aarch64-linux-musl.cmake
# scripts/cross-native-tests.mjs --arch arm64 --libc musl does this for the native tests.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
if(NOT DEFINED ENV{EMOLLM_MUSL_BIN} OR NOT EXISTS "$ENV{EMOLLM_MUSL_BIN}/zig-c++")
  message(FATAL_ERROR "EMOLLM_MUSL_BIN must name the folder of scripts/musl-toolchain.mjs's wrappers (zig-cc, zig-c++, clang-musl-c++)")
endif()
set(_bin "$ENV{EMOLLM_MUSL_BIN}")
set(CMAKE_C_COMPILER "${_bin}/zig-cc")
if(EXISTS "${_bin}/clang-musl-c++")
  set(CMAKE_CXX_COMPILER "${_bin}/clang-musl-c++")
else()
  set(CMAKE_CXX_COMPILER "${_bin}/zig-c++")
endif()
set(CMAKE_AR aarch64-linux-gnu-ar CACHE FILEPATH "")
set(CMAKE_RANLIB aarch64-linux-gnu-ranlib CACHE FILEPATH "")
set(CMAKE_CXX_LINK_EXECUTABLE "${_bin}/zig-c++ <FLAGS> <CMAKE_CXX_LINK_FLAGS> <LINK_FLAGS> <OBJECTS> -o <TARGET> <LINK_LIBRARIES>")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64)
