#include "model_metadata.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <stdexcept>
#include <tuple>
#include <utility>

#include "../box3d/lebedev.hpp"
#include "errors.hpp"
#include "json.hpp"

namespace dodo::runtime {
namespace {

[[noreturn]] void refuse(const std::string& message) { throw Error(DODO_ERROR_MODEL_METADATA, message); }

[[noreturn]] void refuse_test_vectors(const char* name, const char* problem) {
  refuse(std::string("model metadata \"dodo.test_vectors\": \"") + name + "\" " + problem);
}

const std::string& require(const std::map<std::string, std::string>& metadata, const std::string& key) {
  auto it = metadata.find(key);
  if (it == metadata.end()) refuse("model metadata has no \"" + key + "\" (not a Dodo model package?)");
  return it->second;
}

JsonValue parse_json(const std::string& key, const std::string& text) {
  try {
    return JsonValue::parse(text);
  } catch (const std::invalid_argument& error) {
    refuse("model metadata \"" + key + "\" is not valid JSON: " + error.what());
  }
}

// An object with optional keys, which the runtime reads key by key: any other key is refused,
// naming it. A misspelt optional key was ignored, and so was what it carried: "growth_over_NTOT"
// for "growth_over_ntot" in a re-signed package loaded with its growth rates untested (outside
// probe, C round 31). ("dodo.box3d" and "dodo.native_network" have required keys only: a misspelt
// one is missing, and refused as such; other keys there, such as a note, are left alone.)
void refuse_unknown_keys(const char* entry, const JsonValue& json, std::initializer_list<const char*> known) {
  if (!json.is_object()) return;  // at() says what it is instead
  for (const auto& [key, value] : json.object()) {
    if (std::any_of(known.begin(), known.end(), [&key = key](const char* name) { return key == name; })) continue;
    std::string names;
    for (const char* name : known) names += std::string(names.empty() ? "\"" : ", \"") + name + "\"";
    refuse(std::string("model metadata \"") + entry + "\" has the key " + quoted_value(key) +
           ", which this runtime does not read (it reads " + names + ")");
  }
}

// Whether "dodo.outputs" (checked against the graph by onnx_model.cpp before this) names `output`.
bool declares_output(const std::map<std::string, std::string>& metadata, const char* output) {
  const auto entry = metadata.find("dodo.outputs");
  if (entry == metadata.end()) return false;
  try {
    const JsonValue names = JsonValue::parse(entry->second);
    for (const JsonValue& name : names.array())
      if (name.is_string() && name.string() == output) return true;
  } catch (const std::invalid_argument&) {
  }
  return false;
}

// Flattens a JSON array of [cells][rows][cols] numbers into `out`, checking the shape.
std::size_t flatten_cells(const JsonValue& value, std::size_t rows, std::size_t cols, std::vector<double>& out,
                          const char* name) {
  const auto& cells = value.array();
  for (const JsonValue& cell : cells) {
    if (rows == 0) {  // [cells][cols]
      if (cell.array().size() != cols) refuse_test_vectors(name, "has a row of the wrong length");
      for (const JsonValue& number : cell.array()) out.push_back(number.number());
      continue;
    }
    if (cell.array().size() != rows) refuse_test_vectors(name, "has a cell of the wrong shape");
    for (const JsonValue& row : cell.array()) {
      if (row.array().size() != cols) refuse_test_vectors(name, "has a row of the wrong length");
      for (const JsonValue& number : row.array()) out.push_back(number.number());
    }
  }
  return cells.size();
}

std::string format_number(double value) { return number_text(value); }

TestVectors read_test_vectors(const std::string& text) {
  TestVectors vectors;
  const JsonValue json = parse_json("dodo.test_vectors", text);
  refuse_unknown_keys("dodo.test_vectors", json,
                      {"F_init", "u", "F_pred", "atol_over_ntot", "growth_over_ntot", "uncertainty"});
  try {
    std::size_t n = flatten_cells(json.at("F_init"), 6, 4, vectors.F_init, "F_init");
    if (flatten_cells(json.at("F_pred"), 6, 4, vectors.F_pred, "F_pred") != n)
      refuse_test_vectors("F_pred", "differs in length from \"F_init\"");
    if (const JsonValue* u = json.find("u")) {
      if (flatten_cells(*u, 0, 4, vectors.u, "u") != n) refuse_test_vectors("u", "differs in length from \"F_init\"");
    }
    if (const JsonValue* atol = json.find("atol_over_ntot")) vectors.atol_over_ntot = atol->number();
    if (!(vectors.atol_over_ntot > 0 && vectors.atol_over_ntot <= kMaxSelfTestTolerance))
      refuse_test_vectors("atol_over_ntot", ("is " + format_number(vectors.atol_over_ntot) + "; it must lie in (0, " +
                                             format_number(kMaxSelfTestTolerance) + "] (a larger one disables the self-test)")
                                                .c_str());
    for (auto [name, out] : {std::pair{"growth_over_ntot", &vectors.growth_over_ntot},
                             std::pair{"uncertainty", &vectors.uncertainty}}) {
      const JsonValue* values = json.find(name);
      if (!values) continue;
      for (const JsonValue& number : values->array()) out->push_back(number.number());
      if (out->size() != n) refuse_test_vectors(name, "differs in length from \"F_init\"");
    }
    vectors.cells = n;
  } catch (const std::invalid_argument& error) {
    refuse(std::string("model metadata \"dodo.test_vectors\" is malformed: ") + error.what());
  }
  return vectors;
}

}  // namespace

ZMethod z_method_from_name(const std::string& name) {
  if (name == "exact") return ZMethod::kExact;
  if (name == "jedynak") return ZMethod::kJedynak;
  // Quoted shortened: a z_method option of 1 MB came back as a 1 MB message (C round 26).
  throw Error(DODO_ERROR_INVALID_ARGUMENT, "unknown z_method " + quoted_value(name) + " (known: \"exact\", \"jedynak\")");
}

const char* z_method_name(ZMethod method) { return method == ZMethod::kExact ? "exact" : "jedynak"; }

Box3DSettings box3d_settings_without_model(const RequestedBox3D& requested) {
  Box3DSettings settings;
  if (requested.lebedev_order) settings.lebedev_order = requested.lebedev_order;
  if (!requested.z_method.empty()) settings.z_method = z_method_from_name(requested.z_method);
  if (requested.max_flux_factor) settings.max_flux_factor = requested.max_flux_factor;
  return settings;
}

int feature_size(const std::string& features) {
  if (features == kFeatures) return kInvariants;
  if (features == kFeaturesWithBox) return kInvariants + kSpecies + 1;
  if (features == kFeaturesWithCrossing) return kInvariants + kSpecies + 1 + kCrossingFeatures;
  return 0;
}

int known_feature_size(const std::string& features) {
  const int size = feature_size(features);
  if (size == 0)
    refuse("model \"dodo.features\" is " + quoted_value(features) + "; this runtime computes \"" + kFeatures + "\", \"" +
           kFeaturesWithBox + "\" and \"" + kFeaturesWithCrossing + "\"");
  return size;
}

ModelDescription describe_model(const std::map<std::string, std::string>& metadata, int graph_output_size,
                                const RequestedBox3D& requested) {
  ModelDescription model;
  const std::string& version = require(metadata, "dodo.format_version");
  if (version != kFormatVersion)
    refuse("model package \"dodo.format_version\" is " + quoted_value(version) + "; this runtime reads version \"" +
           kFormatVersion + "\" (upgrade Dodo or re-export the model)");
  model.input_size = known_feature_size(require(metadata, "dodo.features"));
  const std::string& head = require(metadata, "dodo.head");
  try {
    model.head = head_from_name(head);
  } catch (const std::invalid_argument& error) {
    refuse(std::string("model \"dodo.head\": ") + error.what());
  }
  const int expected = head_output_size(model.head);
  const std::string& declared = require(metadata, "dodo.output_size");
  if (declared != std::to_string(expected))
    refuse("model \"dodo.output_size\" is " + quoted_value(declared) + " but head \"" + head + "\" has " +
           std::to_string(expected) + " outputs");
  if (graph_output_size >= 0 && graph_output_size != expected)
    refuse("model graph output \"head_output\" has " + std::to_string(graph_output_size) + " columns; head \"" + head +
           "\" needs " + std::to_string(expected));

  // Box3D settings the residual was trained against; a different Box3D makes it meaningless.
  const JsonValue box3d = parse_json("dodo.box3d", require(metadata, "dodo.box3d"));
  try {
    const std::string scheme = box3d.at("scheme").string();
    if (scheme != "pairwise") refuse("model \"dodo.box3d\" scheme is " + quoted_value(scheme) + "; this runtime has \"pairwise\"");
    const std::string form = box3d.at("form").string();
    if (form != "delta") refuse("model \"dodo.box3d\" form is " + quoted_value(form) + "; this runtime has \"delta\"");
    const double order = box3d.at("lebedev_order").number();
    // Checked before the conversion: a double outside int's range (or NaN) cast to int is undefined.
    if (!(order >= 1 && order <= 1e6 && order == std::floor(order)))
      refuse("model \"dodo.box3d\" lebedev_order is " + format_number(order) + "; expected a positive integer");
    model.box3d.lebedev_order = static_cast<int>(order);
    // The model's own settings are checked here, as metadata: an order Box3D lacks (5) or a
    // max_flux_factor outside (0, 1) (0, 1.5, NaN) in an edited package reached Box3D's constructor
    // and came back as DODO_ERROR_INVALID_ARGUMENT / ValueError "Box3D settings: ...", blaming an
    // argument the caller never gave and naming neither the file nor the key (round sixteen).
    const std::vector<int> orders = available_lebedev_orders();
    if (std::find(orders.begin(), orders.end(), model.box3d.lebedev_order) == orders.end()) {
      std::string known;
      for (int known_order : orders) known += (known.empty() ? "" : ", ") + std::to_string(known_order);
      refuse("model \"dodo.box3d\" lebedev_order is " + std::to_string(model.box3d.lebedev_order) +
             "; this runtime has the orders " + known);
    }
    if (requested.lebedev_order && requested.lebedev_order != model.box3d.lebedev_order)
      refuse("model \"dodo.box3d\" lebedev_order is " + std::to_string(model.box3d.lebedev_order) +
             " but lebedev_order " + std::to_string(requested.lebedev_order) + " was requested");
    const std::string z_method = box3d.at("z_method").string();
    if (z_method != "exact" && z_method != "jedynak")
      refuse("model \"dodo.box3d\" z_method " + quoted_value(z_method) + " is unknown");
    model.box3d.z_method = z_method_from_name(z_method);
    if (!requested.z_method.empty() && requested.z_method != z_method)
      refuse("model \"dodo.box3d\" z_method is \"" + z_method + "\" but z_method \"" + requested.z_method +
             "\" was requested");
    model.box3d.max_flux_factor = box3d.at("max_flux_factor").number();
    if (!(model.box3d.max_flux_factor > 0.0 && model.box3d.max_flux_factor < 1.0))  // NaN fails too
      refuse("model \"dodo.box3d\" max_flux_factor is " + format_number(model.box3d.max_flux_factor) +
             "; it must lie in (0, 1)");
    if (requested.max_flux_factor && std::fabs(requested.max_flux_factor - model.box3d.max_flux_factor) > 1e-12)
      refuse("model \"dodo.box3d\" max_flux_factor is " + format_number(model.box3d.max_flux_factor) +
             " but max_flux_factor " + format_number(requested.max_flux_factor) + " was requested");
  } catch (const std::invalid_argument& error) {
    refuse(std::string("model metadata \"dodo.box3d\" is malformed: ") + error.what());
  }

  if (auto it = metadata.find("dodo.test_vectors"); it != metadata.end()) model.test_vectors = read_test_vectors(it->second);
  // A graph's optional outputs are tested with its other outputs: both exporters write their
  // expected values, and a re-signed package without them loaded with those outputs untested.
  if (model.test_vectors.cells > 0) {
    for (auto [output, key, values] : {std::tuple{"log_growth_ratio", "growth_over_ntot", &model.test_vectors.growth_over_ntot},
                                       std::tuple{"uncertainty", "uncertainty", &model.test_vectors.uncertainty}})
      if (values->empty() && declares_output(metadata, output))
        refuse(std::string("model metadata \"dodo.test_vectors\" has no \"") + key + "\", but the graph has the output \"" +
               output + "\" (metadata \"dodo.outputs\"), which the self-test must check: re-export the model with `dodo export`");
  }
  return model;
}

}  // namespace dodo::runtime
