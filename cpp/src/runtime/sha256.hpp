// SHA-256 (FIPS 180-4), for the model package's graph digest (docs/model_package.md).
#pragma once

#include <string>
#include <string_view>

namespace dodo::runtime {

// Lower-case hex digest of `bytes`.
std::string sha256_hex(std::string_view bytes);

}  // namespace dodo::runtime
