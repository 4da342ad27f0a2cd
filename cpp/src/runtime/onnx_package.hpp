// What Dodo reads of an ONNX model file itself, before ONNX Runtime sees it: metadata_props
// (ModelProto field 14) and everything else (graph with weights, opsets, IR version). The SHA-256
// of "everything else" is stored as "dodo.content_sha256", so a file altered after export (a
// flipped bit in a weight, an edited opset) is refused before anything runs
// (docs/model_package.md).
#pragma once

#include <map>
#include <string>
#include <string_view>

namespace dodo::runtime {

inline constexpr const char* kContentDigestKey = "dodo.content_sha256";

struct PackageContents {
  std::string content;                          // the file's bytes without its metadata_props fields
  std::map<std::string, std::string> metadata;  // metadata_props
};

// Walks the ModelProto's top-level fields. Throws Error(DODO_ERROR_MODEL_FORMAT) for bytes that
// are not a well-formed protobuf message or carry no graph (or two), and
// Error(DODO_ERROR_MODEL_METADATA) for a metadata key given twice.
PackageContents read_package(std::string_view bytes);

// Lower-case hex SHA-256 of `content`.
std::string content_sha256(const PackageContents& package);

// Throws Error(DODO_ERROR_MODEL_METADATA) when "dodo.content_sha256" is missing and
// Error(DODO_ERROR_MODEL_FORMAT) when it differs from the content's digest.
void verify_content_digest(const PackageContents& package);

// The model in `bytes` with a fresh "dodo.content_sha256" (replacing any old one): its content
// byte for byte, then its other metadata entries (sorted by key), then the digest.
std::string with_content_digest(std::string_view bytes);

}  // namespace dodo::runtime
