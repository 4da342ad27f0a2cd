// A small JSON reader for the model's metadata_props (dodo.box3d, dodo.test_vectors).
// RFC 8259's grammar (plus NaN, Infinity and -Infinity, which Python writes), strictly: a key
// given twice, a number outside the grammar, a bad \u escape, a lone surrogate and a raw control
// character inside a string are refused; throws std::invalid_argument on bad input.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace dodo::runtime {

class JsonValue {
 public:
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };

  // Most values (numbers, strings, arrays, objects, ...) one text may hold: each takes some 200
  // bytes once read, so a metadata entry of 40 MB of "0," took 4.2 GB and 19 s to load, and one
  // within the 256 MiB file bound would take more memory than a node has (probe round eighteen).
  // The exporter's largest, 10,000 test vectors, holds about 700,000.
  static constexpr std::size_t kMaxValues = std::size_t{1} << 21;  // 2,097,152

  static JsonValue parse(const std::string& text, std::size_t max_values = kMaxValues);

  Kind kind() const { return kind_; }
  bool is_number() const { return kind_ == Kind::kNumber; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_array() const { return kind_ == Kind::kArray; }
  bool is_object() const { return kind_ == Kind::kObject; }

  double number() const;                                // throws unless a number
  const std::string& string() const;                    // throws unless a string
  const std::vector<JsonValue>& array() const;          // throws unless an array
  const JsonValue* find(const std::string& key) const;  // nullptr if absent or not an object
  const JsonValue& at(const std::string& key) const;    // throws if absent or not an object
  const std::map<std::string, JsonValue>& object() const;  // throws unless an object

  // Rendering for messages ("17", "\"exact\""); dump_excerpt cuts it after 200 bytes (between
  // characters) and adds its length: a value from a file may be megabytes long.
  std::string dump() const;
  std::string dump_excerpt() const;

 private:
  friend class JsonParser;
  Kind kind_ = Kind::kNull;
  bool boolean_ = false;
  double number_ = 0;
  std::string string_;
  std::vector<JsonValue> array_;
  std::map<std::string, JsonValue> object_;
};

}  // namespace dodo::runtime
