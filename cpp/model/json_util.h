#pragma once
// Reading config.json fields the way transformers does: an explicit null is a missing key, and
// a field of the wrong type is a clear error naming it.
#include <nlohmann/json.hpp>

#include "core/status.h"

namespace fastlm::model::json_util {

using json = nlohmann::json;

inline bool has(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && !j.at(key).is_null();
}

template <typename T>
T get_or(const json& j, const char* key, T fallback) {
  if (!has(j, key)) return fallback;
  try {
    return j.at(key).get<T>();
  } catch (const json::exception& e) {
    throw Error(detail::concat("config.json: field '", key, "' has the wrong type: ", e.what()));
  }
}

}  // namespace fastlm::model::json_util
