// Numbers in messages: the "C" locale whatever the host's, and the fewest digits that read back.
#pragma once

#include <locale.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ios>
#include <locale>
#include <sstream>
#include <string>

namespace dodo {

// A number for a message, as printf's "%.<digits>g" (or "%.<digits>f" with fixed) writes it in the
// "C" locale: snprintf follows the host's LC_NUMERIC, and a host that had called setlocale(LC_ALL,
// "") under a German locale read "got 1,5" and "differs by 3,2e-05" (probe round eighteen).
// Without `digits`: the fewest significant digits (at most 17) that read back as the same double,
// or, with `as_float`, as the same float. "%.17g" echoed a host's max_flux_factor 1.1 as "got
// 1.1000000000000001" and named the default model's 0.98 "0.97999999999999998"; std::to_string
// ("%f") gave 1.0000001 as "got 1.000000" and -1e-7 as "got -0.000000" (C round 27).
// The "C" locale for the shortest form's snprintf and strtod (made once, when the library loads:
// no guard variable for a fork to catch held); (locale_t)0 if it could not be made.
inline const locale_t kNumberTextLocale = ::newlocale(LC_ALL_MASK, "C", static_cast<locale_t>(0));

inline std::string number_text(double value, int digits = 0, bool fixed = false, bool as_float = false) {
  const auto written = [&](int precision) {
    std::ostringstream text;
    text.imbue(std::locale::classic());
    if (fixed) text << std::fixed;
    text.precision(precision);
    text << value;
    return text.str();
  };
  if (digits > 0 || fixed || !std::isfinite(value)) return written(digits > 0 ? digits : 17);  // inf, NaN as before
  const int most = as_float ? 9 : 17;
  const auto reads_back = [&](const char* text) {
    const double read = std::strtod(text, nullptr);
    return as_float ? static_cast<float>(read) == static_cast<float>(value) : read == value;
  };
  if (!kNumberTextLocale) {  // no "C" locale object: the streams, one precision after another
    for (int precision = 1; precision < most; ++precision) {
      const std::string text = written(precision);
      std::istringstream back(text);
      back.imbue(std::locale::classic());
      double read = 0;
      back >> read;
      if (!back.fail() && (as_float ? static_cast<float>(read) == static_cast<float>(value) : read == value)) return text;
    }
    return written(most);
  }
  // snprintf and strtod in the "C" locale for this thread only (uselocale), the host's given back.
  // A binary search over the precision (if p digits read back, so do p + 1: the p-digit decimal
  // is one of p + 1 digits, and the nearest of those is no farther): some four tries, so that a
  // metadata value of two million numbers quoted in a refusal is written about as fast as with
  // one fixed precision (the streams, one precision after another, took 20 times as long).
  const locale_t host = ::uselocale(kNumberTextLocale);
  char text[48];
  int low = 1, high = most;
  while (low < high) {
    const int middle = (low + high) / 2;
    std::snprintf(text, sizeof text, "%.*g", middle, value);
    if (reads_back(text)) high = middle;
    else low = middle + 1;
  }
  std::snprintf(text, sizeof text, "%.*g", low, value);
  ::uselocale(host);
  return text;
}

}  // namespace dodo
