// A stand-in for GCC's libstdc++.so.6 built against musl, holding exactly the 38 symbols that Bun's
// linux-*-musl builds (npm @oven/bun-linux-x64-musl, -aarch64-musl) import from it, so that the
// unmodified Bun binary runs under Debian's musl loader (scripts/musl-bun.mjs). On Alpine, Bun gets
// these from `apk add libstdc++`; neither Debian nor npm has a musl build of libstdc++.
// Test harness only: never shipped, never linked into emollm.
//
// What the symbols are, and where each comes from here:
//  - __cxa_*, __dynamic_cast, the class type_info vtables, std::terminate, std::set_terminate,
//    std::get_new_handler: the Itanium C++ ABI (GCC's libsupc++), written at the end of this file
//    (Zig's libc++abi has them but hidden, so they cannot be re-exported);
//  - std::_Rb_tree_* (the red-black tree behind std::map / std::set), std::__detail::_List_node_base,
//    std::__detail::_Prime_rehash_policy (std::unordered_map's bucket counts), std::_Hash_bytes,
//    std::condition_variable, std::chrono::steady_clock::now, std::call_once's __once_call /
//    __once_callable / __once_proxy, and the std::__throw_* helpers: written below against
//    libstdc++'s data layouts (the same on x86-64 and aarch64), with the algorithms of
//    libstdc++'s tree.cc / list.cc / hashtable_c++0x.cc. They are defined with the libstdc++
//    mangled names as asm labels (member functions take `this` as their first argument).
//  - The __throw_* helpers print what failed and abort: Bun is built without exceptions, and a
//    test harness that reaches one has failed anyway.
// C headers only: built with `zig cc -x c++` (scripts/musl-bun.mjs), without libc++ / libc++abi.
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>


#define EXPORT extern "C" __attribute__((visibility("default")))

// ---- std::_Rb_tree_node_base (bits/stl_tree.h): color (enum: red 0, black 1), parent, left, right.
namespace {
enum Color : int { kRed = 0, kBlack = 1 };
struct RbNode {
  Color color;
  RbNode* parent;
  RbNode* left;
  RbNode* right;
};

RbNode* minimum(RbNode* x) {
  while (x->left) x = x->left;
  return x;
}
RbNode* maximum(RbNode* x) {
  while (x->right) x = x->right;
  return x;
}

void rotate_left(RbNode* x, RbNode*& root) {
  RbNode* y = x->right;
  x->right = y->left;
  if (y->left) y->left->parent = x;
  y->parent = x->parent;
  if (x == root) root = y;
  else if (x == x->parent->left) x->parent->left = y;
  else x->parent->right = y;
  y->left = x;
  x->parent = y;
}

void rotate_right(RbNode* x, RbNode*& root) {
  RbNode* y = x->left;
  x->left = y->right;
  if (y->right) y->right->parent = x;
  y->parent = x->parent;
  if (x == root) root = y;
  else if (x == x->parent->right) x->parent->right = y;
  else x->parent->left = y;
  y->right = x;
  x->parent = y;
}
}  // namespace

EXPORT RbNode* shim_rb_increment(RbNode* x) __asm__("_ZSt18_Rb_tree_incrementPSt18_Rb_tree_node_base");
EXPORT RbNode* shim_rb_increment(RbNode* x) {
  if (x->right) return minimum(x->right);
  RbNode* y = x->parent;
  while (x == y->right) {
    x = y;
    y = y->parent;
  }
  // Incrementing the rightmost node reaches the header; the header's right is the rightmost node.
  if (x->right != y) x = y;
  return x;
}

EXPORT RbNode* shim_rb_decrement(RbNode* x) __asm__("_ZSt18_Rb_tree_decrementPSt18_Rb_tree_node_base");
EXPORT RbNode* shim_rb_decrement(RbNode* x) {
  // The header (red, its parent's parent is itself) decrements to the rightmost node.
  if (x->color == kRed && x->parent->parent == x) return x->right;
  if (x->left) return maximum(x->left);
  RbNode* y = x->parent;
  while (x == y->left) {
    x = y;
    y = y->parent;
  }
  return y;
}

EXPORT void shim_rb_insert(bool insert_left, RbNode* x, RbNode* p, RbNode& header)
    __asm__("_ZSt29_Rb_tree_insert_and_rebalancebPSt18_Rb_tree_node_baseS0_RS_");
EXPORT void shim_rb_insert(bool insert_left, RbNode* x, RbNode* p, RbNode& header) {
  RbNode*& root = header.parent;
  x->parent = p;
  x->left = nullptr;
  x->right = nullptr;
  x->color = kRed;
  if (insert_left) {
    p->left = x;  // also makes leftmost = x when p == &header
    if (p == &header) {
      header.parent = x;
      header.right = x;
    } else if (p == header.left) {
      header.left = x;
    }
  } else {
    p->right = x;
    if (p == header.right) header.right = x;
  }
  while (x != root && x->parent->color == kRed) {
    RbNode* const xpp = x->parent->parent;
    if (x->parent == xpp->left) {
      RbNode* const y = xpp->right;
      if (y && y->color == kRed) {
        x->parent->color = kBlack;
        y->color = kBlack;
        xpp->color = kRed;
        x = xpp;
      } else {
        if (x == x->parent->right) {
          x = x->parent;
          rotate_left(x, root);
        }
        x->parent->color = kBlack;
        xpp->color = kRed;
        rotate_right(xpp, root);
      }
    } else {
      RbNode* const y = xpp->left;
      if (y && y->color == kRed) {
        x->parent->color = kBlack;
        y->color = kBlack;
        xpp->color = kRed;
        x = xpp;
      } else {
        if (x == x->parent->left) {
          x = x->parent;
          rotate_right(x, root);
        }
        x->parent->color = kBlack;
        xpp->color = kRed;
        rotate_left(xpp, root);
      }
    }
  }
  root->color = kBlack;
}

EXPORT RbNode* shim_rb_erase(RbNode* z, RbNode& header) __asm__("_ZSt28_Rb_tree_rebalance_for_erasePSt18_Rb_tree_node_baseRS_");
EXPORT RbNode* shim_rb_erase(RbNode* z, RbNode& header) {
  RbNode*& root = header.parent;
  RbNode*& leftmost = header.left;
  RbNode*& rightmost = header.right;
  RbNode* y = z;
  RbNode* x = nullptr;
  RbNode* x_parent = nullptr;
  if (!y->left) {
    x = y->right;  // z has at most one child (right); x may be null
  } else if (!y->right) {
    x = y->left;  // z has exactly one child (left)
  } else {
    y = minimum(y->right);  // z has two children: y is its successor
    x = y->right;
  }
  if (y != z) {
    // Put y in z's place.
    z->left->parent = y;
    y->left = z->left;
    if (y != z->right) {
      x_parent = y->parent;
      if (x) x->parent = y->parent;
      y->parent->left = x;
      y->right = z->right;
      z->right->parent = y;
    } else {
      x_parent = y;
    }
    if (root == z) root = y;
    else if (z->parent->left == z) z->parent->left = y;
    else z->parent->right = y;
    y->parent = z->parent;
    const Color c = y->color;
    y->color = z->color;
    z->color = c;
    y = z;  // y is now the node actually removed
  } else {
    x_parent = y->parent;
    if (x) x->parent = y->parent;
    if (root == z) root = x;
    else if (z->parent->left == z) z->parent->left = x;
    else z->parent->right = x;
    if (leftmost == z) leftmost = z->right ? minimum(x) : z->parent;
    if (rightmost == z) rightmost = z->left ? maximum(x) : z->parent;
  }
  if (y->color != kRed) {
    while (x != root && (!x || x->color == kBlack)) {
      if (x == x_parent->left) {
        RbNode* w = x_parent->right;
        if (w->color == kRed) {
          w->color = kBlack;
          x_parent->color = kRed;
          rotate_left(x_parent, root);
          w = x_parent->right;
        }
        if ((!w->left || w->left->color == kBlack) && (!w->right || w->right->color == kBlack)) {
          w->color = kRed;
          x = x_parent;
          x_parent = x_parent->parent;
        } else {
          if (!w->right || w->right->color == kBlack) {
            w->left->color = kBlack;
            w->color = kRed;
            rotate_right(w, root);
            w = x_parent->right;
          }
          w->color = x_parent->color;
          x_parent->color = kBlack;
          if (w->right) w->right->color = kBlack;
          rotate_left(x_parent, root);
          break;
        }
      } else {
        RbNode* w = x_parent->left;
        if (w->color == kRed) {
          w->color = kBlack;
          x_parent->color = kRed;
          rotate_right(x_parent, root);
          w = x_parent->left;
        }
        if ((!w->right || w->right->color == kBlack) && (!w->left || w->left->color == kBlack)) {
          w->color = kRed;
          x = x_parent;
          x_parent = x_parent->parent;
        } else {
          if (!w->left || w->left->color == kBlack) {
            w->right->color = kBlack;
            w->color = kRed;
            rotate_left(w, root);
            w = x_parent->left;
          }
          w->color = x_parent->color;
          x_parent->color = kBlack;
          if (w->left) w->left->color = kBlack;
          rotate_right(x_parent, root);
          break;
        }
      }
    }
    if (x) x->color = kBlack;
  }
  return y;
}

// ---- std::__detail::_List_node_base (bits/stl_list.h): next, prev.
namespace {
struct ListNode {
  ListNode* next;
  ListNode* prev;
};
}  // namespace

EXPORT void shim_list_hook(ListNode* self, ListNode* position) __asm__("_ZNSt8__detail15_List_node_base7_M_hookEPS0_");
EXPORT void shim_list_hook(ListNode* self, ListNode* position) {
  self->next = position;
  self->prev = position->prev;
  position->prev->next = self;
  position->prev = self;
}

EXPORT void shim_list_unhook(ListNode* self) __asm__("_ZNSt8__detail15_List_node_base9_M_unhookEv");
EXPORT void shim_list_unhook(ListNode* self) {
  ListNode* const next = self->next;
  ListNode* const prev = self->prev;
  prev->next = next;
  next->prev = prev;
}

// ---- std::__detail::_Prime_rehash_policy (bits/hashtable_policy.h): max load factor, next resize.
namespace {
struct RehashPolicy {
  float max_load_factor;
  size_t next_resize;
};
struct NeedRehash {  // std::pair<bool, size_t>: returned in two registers on both ABIs
  bool rehash;
  size_t buckets;
};

bool is_prime(size_t n) {
  if (n < 2) return false;
  if (n % 2 == 0) return n == 2;
  for (size_t d = 3; d <= n / d; d += 2)
    if (n % d == 0) return false;
  return true;
}
}  // namespace

EXPORT size_t shim_next_bkt(const RehashPolicy* self, size_t n) __asm__("_ZNKSt8__detail20_Prime_rehash_policy11_M_next_bktEm");
EXPORT size_t shim_next_bkt(const RehashPolicy* self, size_t n) {
  // The smallest prime >= n, and the element count that triggers the next rehash. n == 0 (a
  // container's first initialization) gives 1 bucket and leaves next_resize at 0, as libstdc++.
  if (n == 0) return 1;
  size_t p = n < 2 ? 2 : n;
  while (!is_prime(p)) ++p;
  const double resize = static_cast<double>(p) * self->max_load_factor;
  const_cast<RehashPolicy*>(self)->next_resize = resize >= 1.8e19 ? SIZE_MAX : static_cast<size_t>(resize);
  return p;
}

EXPORT NeedRehash shim_need_rehash(const RehashPolicy* self, size_t n_bkt, size_t n_elt, size_t n_ins)
    __asm__("_ZNKSt8__detail20_Prime_rehash_policy14_M_need_rehashEmmm");
EXPORT NeedRehash shim_need_rehash(const RehashPolicy* self, size_t n_bkt, size_t n_elt, size_t n_ins) {
  if (n_elt + n_ins > self->next_resize) {
    // With next_resize == 0 (a fresh table) grow to at least 11 buckets, as libstdc++ does.
    const size_t want = n_elt + n_ins > (self->next_resize ? 0 : 11) ? n_elt + n_ins : 11;
    const double min_bkts = static_cast<double>(want) / self->max_load_factor;
    if (min_bkts >= static_cast<double>(n_bkt)) {
      const size_t a = static_cast<size_t>(min_bkts) + 1, b = n_bkt * 2;
      return {true, shim_next_bkt(self, a > b ? a : b)};
    }
    const_cast<RehashPolicy*>(self)->next_resize = static_cast<size_t>(static_cast<double>(n_bkt) * self->max_load_factor);
  }
  return {false, 0};
}

// ---- std::_Hash_bytes (libsupc++/hash_bytes.cc): MurmurHash64A, as libstdc++ on 64-bit targets.
EXPORT size_t shim_hash_bytes(const void* ptr, size_t len, size_t seed) __asm__("_ZSt11_Hash_bytesPKvmm");
EXPORT size_t shim_hash_bytes(const void* ptr, size_t len, size_t seed) {
  const uint64_t mul = (0xc6a4a793ULL << 32) + 0x5bd1e995ULL;
  const unsigned char* buf = static_cast<const unsigned char*>(ptr);
  const auto shift_mix = [](uint64_t v) { return v ^ (v >> 47); };
  const size_t aligned = len & ~static_cast<size_t>(7);
  uint64_t hash = seed ^ (len * mul);
  for (size_t i = 0; i < aligned; i += 8) {
    uint64_t d;
    memcpy(&d, buf + i, 8);
    d = shift_mix(d * mul) * mul;
    hash ^= d;
    hash *= mul;
  }
  if ((len & 7) != 0) {
    uint64_t d = 0;
    for (size_t i = len; i > aligned; --i) d = (d << 8) + buf[i - 1];
    hash ^= d;
    hash *= mul;
  }
  hash = shift_mix(hash) * mul;
  hash = shift_mix(hash);
  return hash;
}

// ---- std::condition_variable: one pthread_cond_t; std::unique_lock<std::mutex>: {mutex*, bool}
// with std::mutex a pthread_mutex_t.
EXPORT void shim_cv_ctor(pthread_cond_t* self) __asm__("_ZNSt18condition_variableC1Ev");
EXPORT void shim_cv_ctor(pthread_cond_t* self) { pthread_cond_init(self, nullptr); }
EXPORT void shim_cv_dtor(pthread_cond_t* self) __asm__("_ZNSt18condition_variableD1Ev");
EXPORT void shim_cv_dtor(pthread_cond_t* self) { pthread_cond_destroy(self); }
EXPORT void shim_cv_wait(pthread_cond_t* self, pthread_mutex_t** lock) __asm__("_ZNSt18condition_variable4waitERSt11unique_lockISt5mutexE");
EXPORT void shim_cv_wait(pthread_cond_t* self, pthread_mutex_t** lock) { pthread_cond_wait(self, *lock); }
EXPORT void shim_cv_notify_one(pthread_cond_t* self) __asm__("_ZNSt18condition_variable10notify_oneEv");
EXPORT void shim_cv_notify_one(pthread_cond_t* self) { pthread_cond_signal(self); }
EXPORT void shim_cv_notify_all(pthread_cond_t* self) __asm__("_ZNSt18condition_variable10notify_allEv");
EXPORT void shim_cv_notify_all(pthread_cond_t* self) { pthread_cond_broadcast(self); }

// ---- std::chrono::steady_clock::now(): a time_point of int64 nanoseconds.
EXPORT int64_t shim_steady_now() __asm__("_ZNSt6chrono3_V212steady_clock3nowEv");
EXPORT int64_t shim_steady_now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// ---- std::call_once: the caller stores its callable in these thread-locals, then
// pthread_once(flag, __once_proxy).
__attribute__((visibility("default"))) __thread void* shim_once_callable __asm__("_ZSt15__once_callable") = nullptr;
__attribute__((visibility("default"))) __thread void (*shim_once_call)() __asm__("_ZSt11__once_call") = nullptr;
EXPORT void __once_proxy() {
  void (*const call)() = shim_once_call;
  call();
}

// ---- std::__throw_* and __glibcxx_assert_fail: say what failed, then abort.
[[noreturn]] static void fail(const char* what, const char* detail) {
  fprintf(stderr, "libstdc++ stand-in (emollm test harness): %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  abort();
}
EXPORT void shim_throw_bad_alloc() __asm__("_ZSt17__throw_bad_allocv");
EXPORT void shim_throw_bad_alloc() { fail("std::bad_alloc", nullptr); }
EXPORT void shim_throw_bad_array_new_length() __asm__("_ZSt28__throw_bad_array_new_lengthv");
EXPORT void shim_throw_bad_array_new_length() { fail("std::bad_array_new_length", nullptr); }
EXPORT void shim_throw_bad_function_call() __asm__("_ZSt25__throw_bad_function_callv");
EXPORT void shim_throw_bad_function_call() { fail("std::bad_function_call", nullptr); }
EXPORT void shim_throw_logic_error(const char* s) __asm__("_ZSt19__throw_logic_errorPKc");
EXPORT void shim_throw_logic_error(const char* s) { fail("std::logic_error", s); }
EXPORT void shim_throw_length_error(const char* s) __asm__("_ZSt20__throw_length_errorPKc");
EXPORT void shim_throw_length_error(const char* s) { fail("std::length_error", s); }
EXPORT void shim_throw_system_error(int e) __asm__("_ZSt20__throw_system_errori");
EXPORT void shim_throw_system_error(int e) { fail("std::system_error", strerror(e)); }
EXPORT void shim_throw_out_of_range_fmt(const char* fmt, ...) __asm__("_ZSt24__throw_out_of_range_fmtPKcz");
EXPORT void shim_throw_out_of_range_fmt(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);  // libstdc++'s %lu / %s subset is printf's
  va_end(ap);
  fail("std::out_of_range", buf);
}
EXPORT void shim_assert_fail(const char* file, int line, const char* function, const char* condition)
    __asm__("_ZSt21__glibcxx_assert_failPKciS0_S0_");
EXPORT void shim_assert_fail(const char* file, int line, const char* function, const char* condition) {
  fprintf(stderr, "%s:%d: %s: assertion '%s' failed\n", file, line, function, condition);
  fail("__glibcxx_assert", nullptr);
}

// ---- The C++ ABI part (libsupc++ in GCC): static-initialization guards, terminate handlers,
// type_info vtables and __dynamic_cast. Zig's libc++abi has them but builds them hidden, so they
// cannot be re-exported: they are written here. Bun is built without exceptions (it imports no
// __cxa_throw), so no unwinding support is needed.
namespace {
pthread_mutex_t guard_mutex = PTHREAD_MUTEX_INITIALIZER;
pthread_cond_t guard_cond = PTHREAD_COND_INITIALIZER;
void (*terminate_handler)() = nullptr;
[[noreturn]] void bad_virtual_call() { fail("a type_info virtual function was called", "not provided by the stand-in"); }
}  // namespace

// Guard: byte 0 set once initialized; byte 1 set while a thread initializes.
EXPORT int __cxa_guard_acquire(uint64_t* g) {
  unsigned char* b = reinterpret_cast<unsigned char*>(g);
  if (__atomic_load_n(b, __ATOMIC_ACQUIRE)) return 0;
  pthread_mutex_lock(&guard_mutex);
  for (;;) {
    if (b[0]) {
      pthread_mutex_unlock(&guard_mutex);
      return 0;
    }
    if (!b[1]) {
      b[1] = 1;
      pthread_mutex_unlock(&guard_mutex);
      return 1;
    }
    pthread_cond_wait(&guard_cond, &guard_mutex);
  }
}
EXPORT void __cxa_guard_release(uint64_t* g) {
  unsigned char* b = reinterpret_cast<unsigned char*>(g);
  pthread_mutex_lock(&guard_mutex);
  b[1] = 0;
  __atomic_store_n(b, 1, __ATOMIC_RELEASE);
  pthread_cond_broadcast(&guard_cond);
  pthread_mutex_unlock(&guard_mutex);
}
EXPORT void __cxa_pure_virtual() { fail("pure virtual function called", nullptr); }
EXPORT void __cxa_bad_typeid() { fail("std::bad_typeid", nullptr); }
// Demangling is for Bun's crash reports only: report "not a valid name" (status -2) and let the
// caller print the mangled name.
EXPORT char* __cxa_demangle(const char*, char*, size_t*, int* status) {
  if (status) *status = -2;
  return nullptr;
}
EXPORT void shim_terminate() __asm__("_ZSt9terminatev");
EXPORT void shim_terminate() {
  if (terminate_handler) terminate_handler();
  fail("std::terminate", nullptr);
}
EXPORT void* shim_set_terminate(void (*h)()) __asm__("_ZSt13set_terminatePFvvE");
EXPORT void* shim_set_terminate(void (*h)()) {
  void (*old)() = __atomic_exchange_n(&terminate_handler, h, __ATOMIC_ACQ_REL);
  return reinterpret_cast<void*>(old);
}
// Nothing can set a handler through this library (it exports no std::set_new_handler).
EXPORT void* shim_get_new_handler() __asm__("_ZSt15get_new_handlerv");
EXPORT void* shim_get_new_handler() { return nullptr; }

// type_info objects point at vtable + 2 slots; __dynamic_cast tells the three class kinds apart by
// that address. Their virtual functions are never called without exceptions; they abort if they are.
#define TI_VTABLE(var, sym)                                                                                   \
  __attribute__((visibility("default"))) void* var[12] __asm__(sym) = {                                     \
      nullptr, nullptr, reinterpret_cast<void*>(&bad_virtual_call), reinterpret_cast<void*>(&bad_virtual_call), \
      reinterpret_cast<void*>(&bad_virtual_call), reinterpret_cast<void*>(&bad_virtual_call),                   \
      reinterpret_cast<void*>(&bad_virtual_call), reinterpret_cast<void*>(&bad_virtual_call),                   \
      reinterpret_cast<void*>(&bad_virtual_call), reinterpret_cast<void*>(&bad_virtual_call),                   \
      reinterpret_cast<void*>(&bad_virtual_call), reinterpret_cast<void*>(&bad_virtual_call)}
TI_VTABLE(vt_class, "_ZTVN10__cxxabiv117__class_type_infoE");
TI_VTABLE(vt_si, "_ZTVN10__cxxabiv120__si_class_type_infoE");
TI_VTABLE(vt_vmi, "_ZTVN10__cxxabiv121__vmi_class_type_infoE");

namespace {
// The Itanium ABI's class type_info layouts.
struct TypeInfo {
  const void* vptr;
  const char* name;
};
struct SiTypeInfo : TypeInfo {
  const TypeInfo* base;
};
struct BaseInfo {
  const TypeInfo* type;
  long offset_flags;  // offset << 8 | 2 (public) | 1 (virtual)
};
struct VmiTypeInfo : TypeInfo {
  unsigned flags;
  unsigned base_count;
  BaseInfo bases[1];
};

bool same_type(const TypeInfo* a, const TypeInfo* b) {
  // As libstdc++: equal names mean equal types, except names that start with '*' (local types).
  return a == b || (a->name[0] != '*' && b->name[0] != '*' && strcmp(a->name, b->name) == 0);
}

struct Search {
  const TypeInfo* dst;
  const TypeInfo* src;
  const void* src_ptr;
  const void* found[8];  // distinct public dst subobjects
  int n_found = 0;
  bool src_public = false;
  bool overflow = false;
};

// Every subobject of `type` at `addr` (public: reached through public bases only).
void walk(Search& s, const TypeInfo* type, const char* addr, bool pub) {
  if (pub && same_type(type, s.dst)) {
    bool seen = false;
    for (int i = 0; i < s.n_found; ++i) seen |= s.found[i] == addr;
    if (!seen) {
      if (s.n_found < 8) s.found[s.n_found++] = addr;
      else s.overflow = true;
    }
  }
  if (pub && addr == s.src_ptr && same_type(type, s.src)) s.src_public = true;
  const void* vptr = type->vptr;
  if (vptr == &vt_si[2]) {
    walk(s, static_cast<const SiTypeInfo*>(type)->base, addr, pub);
  } else if (vptr == &vt_vmi[2]) {
    const VmiTypeInfo* v = static_cast<const VmiTypeInfo*>(type);
    for (unsigned i = 0; i < v->base_count; ++i) {
      const long of = v->bases[i].offset_flags;
      long offset = of >> 8;
      if (of & 1) {  // virtual base: its offset is stored in the subobject's vtable at `offset`
        const char* vtable = *reinterpret_cast<const char* const*>(addr);
        offset = *reinterpret_cast<const ptrdiff_t*>(vtable + offset);
      }
      walk(s, v->bases[i].type, addr + offset, pub && (of & 2));
    }
  }
}
}  // namespace

// dynamic_cast<dst*>(src_ptr) for a polymorphic src: the unique public dst subobject of the most
// derived object, provided src_ptr is itself a public base there (down- and cross-casts); null
// when there is none or more than one. The src2dst hint is not needed for that answer.
EXPORT void* __dynamic_cast(const void* src_ptr, const TypeInfo* src, const TypeInfo* dst, ptrdiff_t) {
  const ptrdiff_t* vtable = *reinterpret_cast<const ptrdiff_t* const*>(src_ptr);
  const char* whole = static_cast<const char*>(src_ptr) + vtable[-2];
  const TypeInfo* whole_type = reinterpret_cast<const TypeInfo* const*>(vtable)[-1];
  Search s{dst, src, src_ptr, {}, 0, false, false};
  walk(s, whole_type, whole, true);
  if (s.overflow || s.n_found != 1 || !s.src_public) return nullptr;
  return const_cast<void*>(s.found[0]);
}
