// DODO_MULTIVERSION compiles a hot function three times, for baseline x86-64, x86-64-v3
// (AVX2 + FMA) and x86-64-v4 (AVX-512: twice the doubles per vector, twice the registers), and
// picks one at load time (GNU ifunc). Wheels and `pip install .` then stay
// portable across the nodes of a cluster while using the wide vectors where they exist.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && !defined(DODO_NO_MULTIVERSION)
#define DODO_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
// Set where functions may also be written per target by hand (GCC's target("...") versions of
// one function, dispatched like the clones), for a body that differs by target (vector width).
#define DODO_MULTIVERSION_ENABLED 1
#else
#define DODO_MULTIVERSION
#define DODO_MULTIVERSION_ENABLED 0
#endif

// A function whose a * b + c must round twice, as the scalar code it matches (no fused
// multiply-add): GCC's optimize attribute before it, and for clang, which ignores that attribute
// (a warning, and contracted sums), its pragma as the first line of the body.
#if defined(__clang__)
#define DODO_NO_CONTRACTION
#define DODO_NO_CONTRACTION_BODY _Pragma("clang fp contract(off)")
#else
#define DODO_NO_CONTRACTION __attribute__((optimize("fp-contract=off")))
#define DODO_NO_CONTRACTION_BODY
#endif
