// The metadata JSON reader (cpp/src/runtime/json.cpp) on texts an edited package could carry:
// a key given twice, numbers outside RFC 8259's grammar, \u escapes that are not four hex
// digits, surrogate pairs, more values than a node's memory holds, and numbers read under a
// host's comma-decimal LC_NUMERIC (outside probe, round eighteen of the C side); raw control
// characters inside strings and long keys cut between characters (round nineteen). ctest `json`.
#include <clocale>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "number_text.hpp"
#include "runtime/json.hpp"

using dodo::runtime::JsonValue;

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

// The reader's message for `text`, or "" if it was read.
std::string refusal(const std::string& text, std::size_t max_values = JsonValue::kMaxValues) {
  try {
    JsonValue::parse(text, max_values);
  } catch (const std::invalid_argument& error) {
    return error.what();
  }
  return "";
}

// `text` read and rendered again, or the reader's message.
std::string dumped(const std::string& text) {
  try {
    return JsonValue::parse(text).dump();
  } catch (const std::invalid_argument& error) {
    return error.what();
  }
}

void expect_refused(const std::string& text, const std::string& part,
                    std::size_t max_values = JsonValue::kMaxValues) {
  const std::string message = refusal(text, max_values);
  expect(!message.empty() && message.find(part) != std::string::npos,
         "refused " + text + " naming \"" + part + "\" (got \"" + message + "\")");
}

void expect_number(const std::string& text, double value) {
  try {
    const JsonValue json = JsonValue::parse("{\"x\": " + text + "}");
    const double got = json.at("x").number();
    expect(got == value && std::signbit(got) == std::signbit(value), "number " + text + " read exactly");
  } catch (const std::invalid_argument& error) {
    expect(false, "number " + text + " read (refused: " + error.what() + ")");
  }
}

void expect_string(const std::string& text, const std::string& value) {
  try {
    expect(JsonValue::parse(text).string() == value, "string " + text + " read as its UTF-8 bytes");
  } catch (const std::invalid_argument& error) {
    expect(false, "string " + text + " read (refused: " + error.what() + ")");
  }
}

void test_duplicate_keys() {
  // Before: the map kept the last value, silently.
  expect_refused(R"({"max_flux_factor": 0.5, "lebedev_order": 17, "max_flux_factor": 0.98})",
                 "key \"max_flux_factor\" given twice at offset 46");
  expect_refused(R"({"a": {"b": 1, "b": 1}})", "key \"b\" given twice");
  expect_refused(R"({"a\u0062": 1, "ab": 2})", "key \"ab\" given twice");  // the same key, escaped once
  expect(refusal(R"({"a": {"b": 1}, "b": {"a": 2}, "c": [{"b": 1}, {"b": 2}]})").empty(),
         "one key in several objects is no duplicate");
}

void test_numbers() {
  // Before: std::strtod took these (hex 0x11 as 17, "inf", "nan(1)", "+1", ".5"); RFC 8259 has
  // none of them (NaN, Infinity and -Infinity, which Python writes, stay accepted).
  for (const char* text : {"0x11", "inf", "nan(1)", "+1", ".5", "-.5", "1.", "1.e3", "1e", "1e+", "-", "0X1p3",
                           "infinity", "- 1"})
    expect(!refusal(std::string("{\"x\": ") + text + "}").empty(), std::string("refused the number ") + text);
  expect_refused("{\"x\": 01}", "expected ',' or '}'");
  expect_refused("{\"x\": 1e400}", "number out of range");
  expect_number("0", 0.0);
  expect_number("-0.0", -0.0);
  expect_number("17", 17.0);
  expect_number("0.98", 0.98);
  expect_number("1e-05", 1e-05);
  expect_number("-2.5E+300", -2.5e300);
  expect_number("5e-324", 5e-324);
  expect_number("0.1000000000000000055511151231257827", 0.1);
  expect_number("123456789012345678901234567890", 123456789012345678901234567890.0);
  expect_number("Infinity", INFINITY);
  expect_number("-Infinity", -INFINITY);
  expect(dumped("NaN") == "nan", "NaN read");
  // The fewest digits that read back as the same double (C round 27; "%.17g" wrote 0.98 as
  // 0.97999999999999998 in every message quoting a metadata number).
  expect(dumped("[0.98]") == "[0.98]", "a number rendered with the fewest digits that read back (got " +
                                           dumped("[0.98]") + ")");
  for (const char* text : {"0.1", "1e-05", "-2.5e+300", "5e-324", "1.7976931348623157e+308", "0.30000000000000004",
                           "286.8057", "4.999999873689376e-06", "17", "-0"})
    expect(dumped(std::string("[") + text + "]") == std::string("[") + text + "]",
           std::string("the number ") + text + " rendered as it reads (got " + dumped(std::string("[") + text + "]") + ")");
}

void test_unicode_escapes() {
  // Before: std::stoul read the four characters, so a sign, blanks or "0x" passed, "\u-001"
  // gave the bytes ff bf bf (no UTF-8), "\u+074" was a "t", and "\u74" swallowed what followed.
  expect_refused(R"("exac\u+074")", "bad \\u escape");
  expect_refused(R"("\u-001")", "bad \\u escape");
  expect_refused(R"("\u 074")", "bad \\u escape");
  expect_refused(R"("\u0x74")", "bad \\u escape");
  expect_refused(R"(["\u74", "x"])", "bad \\u escape");
  expect_refused(R"("\uzzzz")", "bad \\u escape");  // before: "stoul", std::stoul's own text
  expect_refused(R"("\u00)", "short \\u escape");
  // Python's json.dumps writes U+1F600 as a surrogate pair: one code point, four bytes (before:
  // two three-byte encodings of the surrogates, not UTF-8).
  expect_string(R"("\ud83d\ude00")", "\xf0\x9f\x98\x80");
  expect_string(R"("\u00e9\u20AC\u0074")", "\xc3\xa9\xe2\x82\xac" "t");
  expect_refused(R"("\ud83d")", "lone high surrogate");
  expect_refused(R"("\ud83dx")", "lone high surrogate");
  expect_refused(R"("\ud83d\u0041")", "lone high surrogate");
  expect_refused(R"("\ude00")", "lone low surrogate");
}

void test_control_characters() {
  // Before (probe round nineteen): a raw byte below 0x20 inside a string was read as it stood,
  // though RFC 8259 wants it escaped; a re-signed "exact\n" or a key holding NUL was no JSON.
  expect_refused(std::string("{\"z_method\": \"exact\n\"}"), "unescaped control character U+000A in a string at offset 19");
  expect_refused(std::string("{\"a\0b\": 1}", 10), "unescaped control character U+0000 in a string at offset 3");
  expect_refused("[\"tab\there\"]", "unescaped control character U+0009");
  expect_refused("\"\x1f\"", "unescaped control character U+001F in a string at offset 1");
  expect_refused("\"\r\"", "U+000D");
  // Escaped, the same characters read; whitespace between tokens stays whitespace; DEL (0x7f)
  // and UTF-8 are no control characters to JSON.
  expect_string(R"("exact\n\t\u0000\u001f")", std::string("exact\n\t\0\x1f", 9));
  expect(refusal("{\n\t\"a\":\r\n 1\n}").empty(), "line breaks and tabs between tokens are whitespace");
  expect_string("\"a\x7f\xc3\xa9\"", "a\x7f\xc3\xa9");
}

void test_long_key_cut_between_characters() {
  // Before (probe round nineteen): a key given twice was cut at byte 200 for the message, inside
  // a two-byte character when an odd number of bytes came before it (a lone lead byte 0xc3).
  std::string key = "a";
  for (int i = 0; i < 150; ++i) key += "\xc3\xa9";
  const std::string message = refusal("{\"" + key + "\": 1, \"" + key + "\": 2}");
  const std::string kept = key.substr(0, 199);  // "a" and 99 whole characters
  expect(message.find("key \"" + kept + "... (301 bytes)\" given twice at offset 309") != std::string::npos,
         "a long key given twice is quoted by its first whole characters (got \"" + message.substr(message.size() - 60) + "\")");
}

void test_value_bound() {
  // Before: no bound; a metadata entry of 40 MB of "0," took 4.2 GB to read.
  expect(refusal("[1, [2, 3], {\"a\": 4}, \"b\", null, 5]", 10).empty(), "10 values within a bound of 10");
  expect_refused("[1, [2, 3], {\"a\": 4}, \"b\", null, 5, 6]", "more than 10 values at offset 35", 10);
  expect(JsonValue::kMaxValues == 2097152, "the bound is 2,097,152 values");
  // The exporter's largest test vectors (dodo export --test-vectors 10000) fit under it.
  std::string cell = "[";
  for (int a = 0; a < 6; ++a) cell += std::string(a ? ", " : "") + "[0.1234567890123, -0.25, 3.5e-05, 1e+30]";
  cell += "]";
  std::string cells = "[", u = "[", numbers = "[";
  for (int c = 0; c < 10000; ++c) {
    cells += (c ? ", " : "") + cell;
    u += c ? ", [1.25, 0.5, -0.5, 0.25]" : "[1.25, 0.5, -0.5, 0.25]";
    numbers += c ? ", 0.125" : "0.125";
  }
  cells += "]", u += "]", numbers += "]";
  const std::string vectors = "{\"F_init\": " + cells + ", \"F_pred\": " + cells + ", \"u\": " + u +
                              ", \"growth_over_ntot\": " + numbers + ", \"uncertainty\": " + numbers +
                              ", \"atol_over_ntot\": 1e-05}";
  expect(refusal(vectors).empty(), "10,000 test vectors within the bound");
}

// Under a locale whose decimal separator is a comma (where one is installed: DODO_TEST_LOCALE,
// else de_DE / fr_FR): before, std::strtod read "0.98" as 0 and stopped at the '.'.
void test_comma_locale() {
  const char* wanted = std::getenv("DODO_TEST_LOCALE");
  const char* names[] = {wanted ? wanted : "", "de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "fr_FR.utf8", "de_DE"};
  const char* chosen = nullptr;
  for (const char* name : names)
    if (*name && std::setlocale(LC_ALL, name) && std::strcmp(std::localeconv()->decimal_point, ",") == 0) {
      chosen = name;
      break;
    }
  if (!chosen) {
    std::setlocale(LC_ALL, "C");
    std::printf("skip no comma-decimal locale is installed (tests/python/test_probe_c_round18.py makes one)\n");
    return;
  }
  expect_number("0.98", 0.98);
  expect_number("-2.5E+300", -2.5e300);
  expect(dumped("[0.98, -1e-05]") == "[0.98,-1e-05]",
         std::string("numbers rendered with a point under ") + chosen + " (got " + dumped("[0.98, -1e-05]") + ")");
  std::setlocale(LC_ALL, "C");
}

// number_text's shortest form (C round 27): for doubles of random bits (every exponent) and
// floats widened to double, the text reads back as the value (as the float), and one digit fewer
// does not (the binary search over the precision finds the fewest).
void test_shortest_numbers() {
  std::uint64_t state = 0x9E3779B97F4A7C15ull;
  int wrong = 0, longer = 0;
  for (int i = 0; i < 50000; ++i) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    double value = 0;
    const bool as_float = i % 4 == 3;
    if (as_float) {
      const auto bits = static_cast<std::uint32_t>(state);
      float single = 0;
      std::memcpy(&single, &bits, sizeof single);
      value = single;
    } else {
      std::memcpy(&value, &state, sizeof value);
    }
    if (!std::isfinite(value)) continue;
    const std::string text = dodo::number_text(value, 0, false, as_float);
    const double read = std::strtod(text.c_str(), nullptr);
    if (as_float ? static_cast<float>(read) != static_cast<float>(value) : read != value) ++wrong;
    // The reference: the first precision that reads back, one after another (the C locale here).
    char reference[48] = "";
    for (int precision = 1; precision <= 17; ++precision) {
      std::snprintf(reference, sizeof reference, "%.*g", precision, value);
      const double back = std::strtod(reference, nullptr);
      if (as_float ? static_cast<float>(back) == static_cast<float>(value) : back == value) break;
    }
    if (text != reference) ++longer;
  }
  expect(wrong == 0, "every shortest number reads back (" + std::to_string(wrong) + " did not)");
  expect(longer == 0, "every shortest number has the fewest digits (" + std::to_string(longer) + " had more)");
  expect(dodo::number_text(0.98) == "0.98" && dodo::number_text(1.1) == "1.1" &&
             dodo::number_text(0.1f, 0, false, true) == "0.1" && dodo::number_text(5e-324) == "5e-324" &&
             dodo::number_text(-0.0) == "-0" && dodo::number_text(1e300) == "1e+300" &&
             dodo::number_text(0.019581729546189308, 0, false, true) == "0.01958173",
         "shortest forms of known numbers");
  expect(dodo::number_text(1.0 / 3.0, 3) == "0.333" && dodo::number_text(2.25, 1, true) == "2.2",
         "explicit precisions as printf writes them");
}

}  // namespace

int main() {
  test_duplicate_keys();
  test_numbers();
  test_unicode_escapes();
  test_control_characters();
  test_long_key_cut_between_characters();
  test_value_bound();
  test_comma_locale();
  test_shortest_numbers();
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
