// The runtime's one exception type: a C API status code plus a message. capi.cpp turns it
// (and every other exception) into a status code at one choke point.
#pragma once

#include <stdexcept>
#include <string>

#include "dodo/dodo.h"

namespace dodo::runtime {

class Error : public std::runtime_error {
 public:
  Error(dodo_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  dodo_status status() const { return status_; }

 private:
  dodo_status status_;
};

}  // namespace dodo::runtime
