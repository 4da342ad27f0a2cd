#include "json.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <locale>
#include <sstream>
#include <stdexcept>

#include "errors.hpp"

namespace dodo::runtime {
namespace {

// A text from a file, for a message: whole up to 200 bytes, else its first bytes, cut between
// UTF-8 characters, and its length (a key or value may be megabytes long).
std::string text_excerpt(const std::string& text) {
  constexpr std::size_t kLimit = 200;
  if (text.size() <= kLimit) return text;
  std::size_t cut = kLimit;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return text.substr(0, cut) + "... (" + std::to_string(text.size()) + " bytes)";
}

}  // namespace

class JsonParser {
 public:
  JsonParser(const std::string& text, std::size_t max_values) : text_(text), max_values_(max_values) {}

  JsonValue parse_document() {
    JsonValue value = parse_value(0);
    skip_space();
    if (pos_ != text_.size()) fail("trailing characters");
    return value;
  }

 private:
  static constexpr int kMaxDepth = 64;  // metadata is shallow; refuse pathological nesting

  [[noreturn]] void fail(const char* what) const { fail_with(what); }
  [[noreturn]] void fail_with(const std::string& what) const {
    throw std::invalid_argument("invalid JSON (" + what + " at offset " + std::to_string(pos_) + ")");
  }
  bool digit_at(std::size_t at) const { return at < text_.size() && text_[at] >= '0' && text_[at] <= '9'; }
  std::size_t skip_digits(std::size_t at) const {
    while (digit_at(at)) ++at;
    return at;
  }
  // Four hex digits of a \u escape, exactly (std::stoul took a sign, blanks and "0x", and read
  // fewer digits, so that "\u-001" gave the bytes ff bf bf and "\u41\"" swallowed the quote).
  unsigned hex4() {
    if (pos_ + 4 > text_.size()) fail("short \\u escape");
    unsigned code = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = text_[pos_ + i];
      const int digit = c >= '0' && c <= '9'   ? c - '0'
                        : c >= 'a' && c <= 'f' ? c - 'a' + 10
                        : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                               : -1;
      if (digit < 0) fail("bad \\u escape");
      code = code * 16 + static_cast<unsigned>(digit);
    }
    pos_ += 4;
    return code;
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
    if (++values_ > max_values_) fail_with("more than " + std::to_string(max_values_) + " values");
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
        const std::size_t key_at = pos_;
        std::string key = parse_string();
        // A key given twice: RFC 8259 leaves the meaning open, and a map kept the last one
        // silently, so an edited package could carry two values for one key (one for Dodo, one
        // for a reader that keeps the first). `dodo export` writes Python dicts: never twice.
        if (value.object_.count(key)) {
          pos_ = key_at;
          // (Cut between characters: a cut inside one left a lone lead byte, shown as "\xc3".)
          fail_with("key \"" + text_excerpt(key) + "\" given twice");
        }
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
    // A number as RFC 8259 writes it: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?. Read in
    // the "C" locale: std::strtod follows the host's LC_NUMERIC, so a host that had called
    // setlocale(LC_ALL, "") under a German or French locale read "0.98" as 0 and no model
    // loaded; it also took hex ("0x11"), "inf" and "nan(...)".
    std::size_t end = pos_;
    if (end < text_.size() && text_[end] == '-') ++end;
    if (!digit_at(end)) fail("unexpected character");
    end = text_[end] == '0' ? end + 1 : skip_digits(end);
    if (end < text_.size() && text_[end] == '.') {
      if (!digit_at(end + 1)) { pos_ = end + 1; fail("expected a digit"); }
      end = skip_digits(end + 1);
    }
    if (end < text_.size() && (text_[end] == 'e' || text_[end] == 'E')) {
      std::size_t exponent = end + 1;
      if (exponent < text_.size() && (text_[exponent] == '+' || text_[exponent] == '-')) ++exponent;
      if (!digit_at(exponent)) { pos_ = exponent; fail("expected a digit"); }
      end = skip_digits(exponent);
    }
    std::istringstream stream(text_.substr(pos_, end - pos_));
    stream.imbue(std::locale::classic());
    double number = 0;
    stream >> number;
    // libstdc++ and libc++ set failbit for a number beyond the double range
    if (stream.fail()) fail("number out of range");
    pos_ = end;
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
      // RFC 8259 (section 7): a character below U+0020 inside a string must be escaped ("\n",
      // "\u0000"). It was read as it stood, so a re-signed package's "exact\n" or a key with a
      // raw NUL was no JSON yet loaded; `dodo export` (json.dumps) never writes one (probe round
      // nineteen).
      if (static_cast<unsigned char>(c) < 0x20) {
        --pos_;
        static const char* digits = "0123456789ABCDEF";
        const unsigned char byte = static_cast<unsigned char>(c);
        fail_with(std::string("unescaped control character U+00") + digits[byte >> 4] + digits[byte & 15] +
                  " in a string");
      }
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
          unsigned code = hex4();
          // Python's json.dumps (ensure_ascii) writes a character beyond the basic multilingual
          // plane as a surrogate pair: one code point, four UTF-8 bytes. A lone surrogate is no
          // character (its three bytes were not UTF-8).
          if (code >= 0xDC00 && code <= 0xDFFF) fail("lone low surrogate in a \\u escape");
          if (code >= 0xD800 && code <= 0xDBFF) {
            if (!consume("\\u")) fail("lone high surrogate in a \\u escape");
            const unsigned low = hex4();
            if (low < 0xDC00 || low > 0xDFFF) fail("lone high surrogate in a \\u escape");
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          }
          if (code < 0x80) {
            out += static_cast<char>(code);
          } else if (code < 0x800) {
            out += static_cast<char>(0xC0 | (code >> 6));
            out += static_cast<char>(0x80 | (code & 0x3F));
          } else if (code < 0x10000) {
            out += static_cast<char>(0xE0 | (code >> 12));
            out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (code & 0x3F));
          } else {
            out += static_cast<char>(0xF0 | (code >> 18));
            out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
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
  const std::size_t max_values_;
  std::size_t values_ = 0;
  size_t pos_ = 0;
};

std::string JsonValue::dump_excerpt() const {
  return text_excerpt(dump());
}

JsonValue JsonValue::parse(const std::string& text, std::size_t max_values) {
  return JsonParser(text, max_values).parse_document();
}

double JsonValue::number() const {
  if (kind_ != Kind::kNumber) throw std::invalid_argument("JSON value is not a number: " + dump_excerpt());
  return number_;
}
const std::string& JsonValue::string() const {
  if (kind_ != Kind::kString) throw std::invalid_argument("JSON value is not a string: " + dump_excerpt());
  return string_;
}
const std::vector<JsonValue>& JsonValue::array() const {
  if (kind_ != Kind::kArray) throw std::invalid_argument("JSON value is not an array: " + dump_excerpt());
  return array_;
}
const JsonValue* JsonValue::find(const std::string& key) const {
  if (kind_ != Kind::kObject) return nullptr;
  auto it = object_.find(key);
  return it == object_.end() ? nullptr : &it->second;
}
const std::map<std::string, JsonValue>& JsonValue::object() const {
  if (kind_ != Kind::kObject) throw std::invalid_argument("JSON value is not an object: " + dump_excerpt());
  return object_;
}
const JsonValue& JsonValue::at(const std::string& key) const {
  // Not an object: said so by object() ("dodo.box3d" given as a list read 'JSON object has no key "scheme"').
  object();
  const JsonValue* value = find(key);
  if (!value) throw std::invalid_argument("JSON object has no key \"" + key + "\"");
  return *value;
}

std::string JsonValue::dump() const {
  switch (kind_) {
    case Kind::kNull: return "null";
    case Kind::kBool: return boolean_ ? "true" : "false";
    case Kind::kNumber:  // the fewest digits that read back as the number, in the "C" locale (errors.hpp)
      return number_text(number_);
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
