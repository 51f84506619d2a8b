#include "isa.h"

#include <cpuid.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace surety {
namespace {

constexpr const char* kIsaEnv = "SURETY_KERNELS_ISA";

struct CpuFeatures {
  bool avx2_fma = false;
  bool avx512f = false;
};

// XCR0 says which register files the OS saves on a context switch. A CPU with AVX whose OS does
// not save the upper halves of ymm/zmm registers must not use them, so cpuid alone is not enough.
uint64_t read_xcr0() {
  uint32_t eax = 0;
  uint32_t edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

CpuFeatures probe_cpu() {
  CpuFeatures f;
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return f;
  const bool osxsave = (ecx & (1u << 27)) != 0;
  const bool avx = (ecx & (1u << 28)) != 0;
  const bool fma = (ecx & (1u << 12)) != 0;
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = read_xcr0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;     // SSE and AVX state
  const bool os_zmm = (xcr0 & 0xE6) == 0xE6;   // + opmask, ZMM0-15 upper halves, ZMM16-31
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return f;
  const bool avx2 = (ebx & (1u << 5)) != 0;
  const bool avx512f = (ebx & (1u << 16)) != 0;
  f.avx2_fma = os_ymm && avx2 && fma;
  f.avx512f = f.avx2_fma && os_zmm && avx512f;
  return f;
}

// Probed once, when the library is loaded.
const CpuFeatures kCpu = probe_cpu();

struct IsaRow {
  Isa isa;
  const char* name;
};

constexpr IsaRow kIsaRows[] = {
#define SURETY_ISA(enumerator, name, suffix) {Isa::enumerator, name},
#include "isa_variants.inc"
#undef SURETY_ISA
};

}  // namespace

const char* isa_name(Isa isa) {
  for (const IsaRow& row : kIsaRows) {
    if (row.isa == isa) return row.name;
  }
  return "unknown";
}

bool cpu_supports(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return kCpu.avx512f;
    case Isa::kAvx2:
      return kCpu.avx2_fma;
    case Isa::kScalar:
      return true;
  }
  return false;
}

bool select_isa(Isa* isa, std::string* error) {
  const char* forced = std::getenv(kIsaEnv);
  if (forced == nullptr || forced[0] == '\0') {
    for (const IsaRow& row : kIsaRows) {
      if (cpu_supports(row.isa)) {
        *isa = row.isa;
        return true;
      }
    }
    *isa = Isa::kScalar;
    return true;
  }
  std::string known;
  for (const IsaRow& row : kIsaRows) {
    if (std::strcmp(forced, row.name) == 0) {
      if (!cpu_supports(row.isa)) {
        *error = std::string(kIsaEnv) + "=" + forced + " but this CPU (or its operating system) does not support " +
                 row.name;
        return false;
      }
      *isa = row.isa;
      return true;
    }
    known += known.empty() ? "" : ", ";
    known += row.name;
  }
  *error = std::string(kIsaEnv) + "=" + forced + " is not a known instruction-set path (expected one of: " + known +
           ")";
  return false;
}

const char* isa_name_or_error(const char** error) {
  thread_local std::string message;
  Isa isa = Isa::kScalar;
  if (!select_isa(&isa, &message)) {
    *error = message.c_str();
    return nullptr;
  }
  *error = nullptr;
  return isa_name(isa);
}

}  // namespace surety
