// Numbers in messages: the "C" locale whatever the host's, and the fewest digits that read back.
#pragma once

#include <cmath>
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

}  // namespace dodo
