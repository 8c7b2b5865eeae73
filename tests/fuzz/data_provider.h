// libFuzzer's FuzzedDataProvider (header-only, from clang's runtime). The
// clang build finds it on clang's own include path; the g++ meson build
// copies it into its build directory (meson.build), since clang's include
// directory also holds clang's own C headers that g++ must not see. The
// header names size_t unqualified, which libstdc++'s <cstddef> does not
// promise in the global namespace.
#pragma once

#include <stddef.h>

#if __has_include(<fuzzer/FuzzedDataProvider.h>)
#include <fuzzer/FuzzedDataProvider.h>
#else
#include "FuzzedDataProvider.h"
#endif
