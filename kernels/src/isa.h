// Instruction-set paths: a CPU probe run once at load, and the choice a kernel instance makes
// when it is created (SURETY_KERNELS_ISA, else the best path the CPU has).
#pragma once

#include <cstddef>
#include <string>

namespace surety {

enum class Isa {
#define SURETY_ISA(enumerator, name, suffix) enumerator,
#include "isa_variants.inc"
#undef SURETY_ISA
};

// "avx512", "avx2" or "scalar".
const char* isa_name(Isa isa);

// Whether this CPU, and the operating system's saved register state, supports `isa`.
bool cpu_supports(Isa isa);

// The path a kernel created now should use: the one SURETY_KERNELS_ISA names, or, when the
// variable is unset or empty, the most capable path the CPU supports. Returns false and sets
// *error when the variable names an unknown path or one this CPU lacks.
bool select_isa(Isa* isa, std::string* error);

// Whether a variant table (rows with an `isa` member) has one row per path of isa_variants.inc,
// in its order: each op's dispatch static_asserts it.
template <typename Row, size_t N>
constexpr bool rows_follow_isa_list(const Row (&rows)[N]) {
  constexpr Isa order[] = {
#define SURETY_ISA(enumerator, name, suffix) Isa::enumerator,
#include "isa_variants.inc"
#undef SURETY_ISA
  };
  if (N != sizeof(order) / sizeof(order[0])) return false;
  for (size_t i = 0; i < N; ++i) {
    if (rows[i].isa != order[i]) return false;
  }
  return true;
}

// select_isa for C callers: the name, or nullptr with *error pointing at a message that stays
// valid for the calling thread until its next call.
const char* isa_name_or_error(const char** error);

}  // namespace surety
