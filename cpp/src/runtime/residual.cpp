#include "residual.hpp"

#include <stdexcept>

#include "errors.hpp"

namespace dodo::runtime {

int head_output_size(Head head) { return head == Head::kDirect ? kDirectOutputs : kEquivariantOutputs; }

Head head_from_name(const std::string& name) {
  if (name == "direct") return Head::kDirect;
  if (name == "equivariant") return Head::kEquivariant;
  throw std::invalid_argument("unknown head " + quoted_value(name) + " (known: \"direct\", \"equivariant\")");
}

const char* head_name(Head head) { return head == Head::kDirect ? "direct" : "equivariant"; }

}  // namespace dodo::runtime
