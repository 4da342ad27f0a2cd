// The runtime's one exception type: a C API status code plus a message. capi.cpp turns it
// (and every other exception) into a status code at one choke point.
#pragma once

#include <ios>
#include <locale>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>

#include "dodo/dodo.h"
#include "number_text.hpp"

namespace dodo::runtime {

// The length of the UTF-8 character that starts at text[i], or 0 where the bytes there are not one
// (a lone continuation byte, a cut sequence, an overlong form, a surrogate, a code point above
// U+10FFFF). Shared by printable_message and first_invalid_utf8 (probe round twenty-one).
inline std::size_t utf8_character_length(const std::string& text, std::size_t i) {
  const unsigned char lead = static_cast<unsigned char>(text[i]);
  std::size_t length = lead < 0x80 ? 1 : (lead >> 5) == 6 ? 2 : (lead >> 4) == 14 ? 3 : (lead >> 3) == 30 ? 4 : 0;
  bool valid = length > 0 && i + length <= text.size();
  for (std::size_t k = 1; valid && k < length; ++k) valid = (static_cast<unsigned char>(text[i + k]) >> 6) == 2;
  if (valid && length > 1) {  // no overlong forms, surrogates or code points above U+10FFFF
    const unsigned char second = static_cast<unsigned char>(text[i + 1]);
    if (length == 2) valid = lead >= 0xc2;
    if (length == 3) valid = !(lead == 0xe0 && second < 0xa0) && !(lead == 0xed && second >= 0xa0);
    if (length == 4) valid = lead <= 0xf4 && !(lead == 0xf0 && second < 0x90) && !(lead == 0xf4 && second >= 0x90);
  }
  return valid ? length : 0;
}

// The offset of the first byte of `text` that begins no UTF-8 character, or std::string::npos
// when the whole text is UTF-8.
inline std::size_t first_invalid_utf8(const std::string& text) {
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t length = utf8_character_length(text, i);
    if (length == 0) return i;
    i += length;
  }
  return std::string::npos;
}

// Messages quote text from model files (metadata keys and values, ORT's messages about the file),
// which a corrupted file can fill with any bytes. Hosts print them and Python decodes them as
// UTF-8, so bytes that are not valid UTF-8, and control characters, become "\xNN".
// keep_line_breaks: a whole message keeps its newlines and tabs (its own lists use them). Text a
// host gave (a path) is quoted with keep_line_breaks false: every byte under 0x20 and 0x7f escaped,
// so a path holding a newline cannot split a message where the path does not end (probe round
// sixteen). One function for both (probe round seventeen; round sixteen had a second loop).
inline std::string printable_message(const std::string& text, bool keep_line_breaks = true) {
  std::string out;
  out.reserve(text.size());
  auto escape = [&out](unsigned char byte) {
    const char* digits = "0123456789abcdef";
    out += "\\x";
    out += digits[byte >> 4];
    out += digits[byte & 15];
  };
  for (std::size_t i = 0; i < text.size();) {
    const unsigned char lead = static_cast<unsigned char>(text[i]);
    const std::size_t length = utf8_character_length(text, i);
    const bool valid = length > 0;
    const bool line_break = keep_line_breaks && (lead == '\n' || lead == '\t');
    if (!valid || (length == 1 && ((lead < 0x20 && !line_break) || lead == 0x7f))) {
      escape(lead);
      ++i;
      continue;
    }
    out.append(text, i, length);
    i += length;
  }
  return out;
}

// A value read from a model file, quoted for a message: whole up to `limit` bytes, else its first
// bytes (cut between characters) and its length. A re-signed package's "dodo.format_version" of
// 20 MB came back as a message of 20 MB (probe round eighteen).
// excerpt: the same unquoted ("[...]" of a JSON text).
// Quoted, every control character of the value is escaped, as in a path (printable_message with
// keep_line_breaks false): a z_method read with fgets ("exact\n") or a DODO_NETWORK_EVALUATOR
// with a trailing tab was quoted with its line break or tab raw, so the message split inside the
// quotes and the character that made the value unknown could not be seen (outside probe, C round
// twenty-nine). The length given is the value's own, in bytes.
inline std::string excerpt(const std::string& value, bool quoted = false, std::size_t limit = 200) {
  const char* quote = quoted ? "\"" : "";
  auto shown = [quoted](const std::string& text) { return quoted ? printable_message(text, false) : text; };
  if (value.size() <= limit) return quote + shown(value) + quote;
  std::size_t cut = limit;
  while (cut > 0 && (static_cast<unsigned char>(value[cut]) & 0xC0) == 0x80) --cut;
  return quote + shown(value.substr(0, cut)) + quote + "... (" + std::to_string(value.size()) + " bytes)";
}
inline std::string quoted_value(const std::string& value) { return excerpt(value, true); }

// A path for a message: whole up to 512 bytes, else its first and last 240 bytes (cut between
// characters) around "...", and its length: a model path of 1 MB was quoted whole in every
// message about it (outside probe, C round twenty-five), an onnxruntime_library of 1 MB twice
// (C round twenty-six).
inline std::string shortened_path(const std::string& path, bool quoted) {
  const std::string text = printable_message(path, false);
  const char* quote = quoted ? "\"" : "";
  constexpr std::size_t limit = 512, keep = 240;
  if (text.size() <= limit) return quote + text + quote;
  std::size_t head = keep, tail = text.size() - keep;
  while (head > 0 && (static_cast<unsigned char>(text[head]) & 0xC0) == 0x80) --head;
  while (tail < text.size() && (static_cast<unsigned char>(text[tail]) & 0xC0) == 0x80) ++tail;
  return quote + text.substr(0, head) + "..." + text.substr(tail) + quote + " (path of " +
         std::to_string(path.size()) + " bytes, shortened)";
}
inline std::string quoted_path(const std::string& path) { return shortened_path(path, true); }

// Numbers in messages: number_text.hpp (the "C" locale; the fewest digits that read back).
using dodo::number_text;

class Error : public std::runtime_error {
 public:
  Error(dodo_status status, const std::string& message)
      : std::runtime_error(printable_message(message)), status_(status) {}
  // With the errno of the system call that failed (a model file that cannot be opened or read:
  // EACCES, EIO, ...), so that a binding can raise the error its language has for it (Python:
  // PermissionError for EACCES) instead of one class for every DODO_ERROR_FILE.
  Error(dodo_status status, const std::string& message, int system_error)
      : std::runtime_error(printable_message(message)), status_(status), system_error_(system_error) {}
  dodo_status status() const { return status_; }
  int system_error() const { return system_error_; }  // 0: not from a system call

 private:
  dodo_status status_;
  int system_error_ = 0;
};

// A std::bad_alloc that says what needed the memory, in static text: where the allocation that failed
// was a small one, making a message may fail too until the call has unwound and freed what it held
// (the model file's bytes). The C API's guard adds the cause then; other bindings see it as bad_alloc.
class OutOfMemoryFor : public std::bad_alloc {
 public:
  explicit OutOfMemoryFor(const char* what) noexcept : what_(what) {}
  const char* what() const noexcept override { return what_; }

 private:
  const char* what_;
};

}  // namespace dodo::runtime
