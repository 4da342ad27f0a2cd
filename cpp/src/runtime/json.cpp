#include "json.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace dodo::runtime {

class JsonParser {
 public:
  explicit JsonParser(const std::string& text) : text_(text) {}

  JsonValue parse_document() {
    JsonValue value = parse_value(0);
    skip_space();
    if (pos_ != text_.size()) fail("trailing characters");
    return value;
  }

 private:
  static constexpr int kMaxDepth = 64;  // metadata is shallow; refuse pathological nesting

  [[noreturn]] void fail(const char* what) const {
    throw std::invalid_argument(std::string("invalid JSON (") + what + " at offset " + std::to_string(pos_) + ")");
  }
  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' || text_[pos_] == '\r' || text_[pos_] == '\t'))
      ++pos_;
  }
  bool consume(const char* literal) {
    size_t n = std::char_traits<char>::length(literal);
    if (text_.compare(pos_, n, literal) != 0) return false;
    pos_ += n;
    return true;
  }

  JsonValue parse_value(int depth) {
    if (depth > kMaxDepth) fail("nesting too deep");
    skip_space();
    if (pos_ >= text_.size()) fail("unexpected end");
    JsonValue value;
    char c = text_[pos_];
    if (c == '{') {
      value.kind_ = JsonValue::Kind::kObject;
      ++pos_;
      skip_space();
      if (pos_ < text_.size() && text_[pos_] == '}') { ++pos_; return value; }
      while (true) {
        skip_space();
        if (pos_ >= text_.size() || text_[pos_] != '"') fail("expected a key");
        std::string key = parse_string();
        skip_space();
        if (pos_ >= text_.size() || text_[pos_++] != ':') fail("expected ':'");
        value.object_[key] = parse_value(depth + 1);
        skip_space();
        if (pos_ < text_.size() && text_[pos_] == ',') { ++pos_; continue; }
        if (pos_ < text_.size() && text_[pos_] == '}') { ++pos_; return value; }
        fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      value.kind_ = JsonValue::Kind::kArray;
      ++pos_;
      skip_space();
      if (pos_ < text_.size() && text_[pos_] == ']') { ++pos_; return value; }
      while (true) {
        value.array_.push_back(parse_value(depth + 1));
        skip_space();
        if (pos_ < text_.size() && text_[pos_] == ',') { ++pos_; continue; }
        if (pos_ < text_.size() && text_[pos_] == ']') { ++pos_; return value; }
        fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      value.kind_ = JsonValue::Kind::kString;
      value.string_ = parse_string();
      return value;
    }
    if (consume("true")) { value.kind_ = JsonValue::Kind::kBool; value.boolean_ = true; return value; }
    if (consume("false")) { value.kind_ = JsonValue::Kind::kBool; return value; }
    if (consume("null")) return value;
    // Python's json writes NaN/Infinity for non-finite floats; accept them.
    if (consume("NaN")) { value.kind_ = JsonValue::Kind::kNumber; value.number_ = std::nan(""); return value; }
    if (consume("Infinity")) { value.kind_ = JsonValue::Kind::kNumber; value.number_ = INFINITY; return value; }
    if (consume("-Infinity")) { value.kind_ = JsonValue::Kind::kNumber; value.number_ = -INFINITY; return value; }
    const char* begin = text_.c_str() + pos_;
    char* end = nullptr;
    double number = std::strtod(begin, &end);
    if (end == begin) fail("unexpected character");
    pos_ += static_cast<size_t>(end - begin);
    value.kind_ = JsonValue::Kind::kNumber;
    value.number_ = number;
    return value;
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    while (pos_ < text_.size()) {
      char c = text_[pos_++];
      if (c == '"') return out;
      if (c != '\\') { out += c; continue; }
      if (pos_ >= text_.size()) break;
      char escape = text_[pos_++];
      switch (escape) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          if (pos_ + 4 > text_.size()) fail("short \\u escape");
          unsigned code = static_cast<unsigned>(std::stoul(text_.substr(pos_, 4), nullptr, 16));
          pos_ += 4;
          // Basic multilingual plane only; metadata keys and values are ASCII in practice.
          if (code < 0x80) {
            out += static_cast<char>(code);
          } else if (code < 0x800) {
            out += static_cast<char>(0xC0 | (code >> 6));
            out += static_cast<char>(0x80 | (code & 0x3F));
          } else {
            out += static_cast<char>(0xE0 | (code >> 12));
            out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (code & 0x3F));
          }
          break;
        }
        default: fail("bad escape");
      }
    }
    fail("unterminated string");
  }

  const std::string& text_;
  size_t pos_ = 0;
};

JsonValue JsonValue::parse(const std::string& text) { return JsonParser(text).parse_document(); }

double JsonValue::number() const {
  if (kind_ != Kind::kNumber) throw std::invalid_argument("JSON value is not a number: " + dump());
  return number_;
}
const std::string& JsonValue::string() const {
  if (kind_ != Kind::kString) throw std::invalid_argument("JSON value is not a string: " + dump());
  return string_;
}
const std::vector<JsonValue>& JsonValue::array() const {
  if (kind_ != Kind::kArray) throw std::invalid_argument("JSON value is not an array: " + dump());
  return array_;
}
const JsonValue* JsonValue::find(const std::string& key) const {
  if (kind_ != Kind::kObject) return nullptr;
  auto it = object_.find(key);
  return it == object_.end() ? nullptr : &it->second;
}
const JsonValue& JsonValue::at(const std::string& key) const {
  const JsonValue* value = find(key);
  if (!value) throw std::invalid_argument("JSON object has no key \"" + key + "\"");
  return *value;
}

std::string JsonValue::dump() const {
  switch (kind_) {
    case Kind::kNull: return "null";
    case Kind::kBool: return boolean_ ? "true" : "false";
    case Kind::kNumber: {
      char buffer[32];
      std::snprintf(buffer, sizeof buffer, "%.17g", number_);
      return buffer;
    }
    case Kind::kString: return "\"" + string_ + "\"";
    case Kind::kArray: {
      std::string out = "[";
      for (size_t i = 0; i < array_.size(); ++i) out += (i ? "," : "") + array_[i].dump();
      return out + "]";
    }
    case Kind::kObject: {
      std::string out = "{";
      bool first = true;
      for (const auto& [key, value] : object_) {
        out += (first ? "\"" : ",\"") + key + "\":" + value.dump();
        first = false;
      }
      return out + "}";
    }
  }
  return "null";
}

}  // namespace dodo::runtime
