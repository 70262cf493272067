# Cross-compiling for linux-arm64 (glibc) on a Debian x64 host with Debian's cross toolchain
# (apt-get install g++-aarch64-linux-gnu qemu-user). Executables run under qemu-user
# (CMAKE_CROSSCOMPILING_EMULATOR, so ctest runs them too); link them -static, or give qemu the
# cross toolchain's libraries (qemu-aarch64 -L /usr/aarch64-linux-gnu).
#   cmake -S . -B build-arm64-glibc --toolchain cmake/toolchains/aarch64-linux-gnu.cmake
# scripts/cross-native-tests.mjs --arch arm64 does this for the native tests.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_AR aarch64-linux-gnu-ar CACHE FILEPATH "")
set(CMAKE_RANLIB aarch64-linux-gnu-ranlib CACHE FILEPATH "")
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-L;/usr/aarch64-linux-gnu)
