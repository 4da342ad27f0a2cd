// What Dodo reads of an ONNX model file itself, before ONNX Runtime sees it: metadata_props
// (ModelProto field 14) and everything else (graph with weights, opsets, IR version). Two
// digests make a package that was altered after export (a flipped bit in a weight, an edited
// opset, an edited Box3D setting or test vector) refuse to load before anything runs
// (docs/model_package.md): "dodo.content_sha256" over everything else, and
// "dodo.metadata_sha256" over every metadata entry (the content digest included), so each field
// that changes what the runtime computes is covered. They guard against accidents and careless
// edits, not against someone who re-signs on purpose (with_content_digest does that).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace dodo::runtime {

inline constexpr const char* kContentDigestKey = "dodo.content_sha256";
inline constexpr const char* kMetadataDigestKey = "dodo.metadata_sha256";

struct PackageContents {
  std::string content;                          // the file's bytes without its metadata_props fields
  std::map<std::string, std::string> metadata;  // metadata_props
  // The first node read_package found that a Dodo package never holds (a Loop, an operator off the
  // allow-list, another domain's), as the message that refuses it; "" for none. Raised by
  // refuse_graph_operators after the digests are checked, so that a damaged file (one flipped
  // byte of "Cast") is called damaged, not a package of an unknown operator (C round 26's test).
  std::string operator_refusal;
};

// Where the bytes given to read_package came from, for the words of its refusals: a host's buffer
// is no file (outside probe, C round forty-five).
enum class PackageOrigin { kFile, kMemory };

// Walks the ModelProto's top-level fields. Throws Error(DODO_ERROR_MODEL_FORMAT) for bytes that
// are not a well-formed protobuf message or carry no graph (or two), and
// Error(DODO_ERROR_MODEL_METADATA) for a metadata key given twice.
PackageContents read_package(std::string_view bytes, PackageOrigin origin = PackageOrigin::kFile);

// Lower-case hex SHA-256 of `content`.
std::string content_sha256(const PackageContents& package);

// Lower-case hex SHA-256 of the metadata entries other than "dodo.metadata_sha256", sorted by
// key, each as: key length (8 bytes, little-endian), key, value length (same), value.
std::string metadata_sha256(const PackageContents& package);

// Throws Error(DODO_ERROR_MODEL_METADATA) when a digest is missing, the metadata's differs or a key
// or value is not UTF-8 text,
// and Error(DODO_ERROR_MODEL_FORMAT) when the content's differs.
void verify_content_digest(const PackageContents& package);

// Throws Error(DODO_ERROR_MODEL_FORMAT) with package.operator_refusal when it is not empty. Call it
// after verify_content_digest and before anything hands the bytes to ONNX Runtime.
void refuse_graph_operators(const PackageContents& package);

// A float32 initializer of the graph: its shape and values (row-major).
struct FloatTensor {
  std::vector<std::int64_t> dims;
  std::vector<float> values;
  // False for a tensor that no node of the graph takes as an input and that is no graph output:
  // it plays no part in what the graph computes. Always true in a graph with subgraphs (If, Loop,
  // Scan), whose nodes may read a tensor of the outer graph.
  bool read_by_a_node = true;
};

// The graph's float32 constants by name: its initializers, and its top-level Constant nodes'
// values under their outputs' names (raw_data or float_data; tensors stored outside the file and
// other element types are left out), each marked whether a node reads it. Throws
// Error(DODO_ERROR_MODEL_FORMAT) for a malformed message or a tensor whose data does not match its
// shape.
std::map<std::string, FloatTensor> read_float_initializers(std::string_view bytes);

// The model in `bytes`, signed again: its content byte for byte, then its other metadata entries
// (sorted by key), then a fresh "dodo.content_sha256" and "dodo.metadata_sha256".
std::string with_content_digest(std::string_view bytes);

}  // namespace dodo::runtime
