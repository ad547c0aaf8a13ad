// fastlm._core.gguf_metadata: GGUF metadata as Python values, parsed in C++ (the tokenizer
// needs the vocabulary and merges at start-up; reading them element by element in Python
// costs seconds).
#include "model/gguf.h"

#include <pybind11/stl.h>

#include "bindings/registry.h"

namespace py = pybind11;

namespace {

using fastlm::model::GgufValue;
using fastlm::model::GgufValueType;

py::str utf8(const std::string& s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
  if (o == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

bool is_float(GgufValueType t) { return t == GgufValueType::kF32 || t == GgufValueType::kF64; }

py::object scalar(const GgufValue& v, GgufValueType t) {
  if (t == GgufValueType::kString) return utf8(v.s);
  if (t == GgufValueType::kBool) return py::bool_(v.i != 0);
  if (is_float(t)) return py::float_(v.f);
  return py::int_(v.i);
}

py::object to_python(const GgufValue& v) {
  if (v.type != GgufValueType::kArray) return scalar(v, v.type);
  py::list out(v.array_len);
  if (v.array_type == GgufValueType::kString) {
    for (size_t i = 0; i < v.array_strings.size(); ++i) out[i] = utf8(v.array_strings[i]);
  } else if (is_float(v.array_type)) {
    for (size_t i = 0; i < v.array_floats.size(); ++i) out[i] = py::float_(v.array_floats[i]);
  } else if (v.array_type == GgufValueType::kBool) {
    for (size_t i = 0; i < v.array_ints.size(); ++i) out[i] = py::bool_(v.array_ints[i] != 0);
  } else {
    for (size_t i = 0; i < v.array_ints.size(); ++i) out[i] = py::int_(v.array_ints[i]);
  }
  return out;
}

}  // namespace

FASTLM_BINDING(gguf) {
  m.def(
      "gguf_metadata",
      [](const std::string& path, const std::string& prefix) {
        std::shared_ptr<fastlm::model::GgufFile> file;
        {
          py::gil_scoped_release release;
          file = fastlm::model::GgufFile::open(path);
        }
        py::dict out;
        for (const auto& [key, value] : file->metadata()) {
          if (key.rfind(prefix, 0) == 0) out[utf8(key)] = to_python(value);
        }
        return out;
      },
      py::arg("path"), py::arg("prefix") = "",
      "GGUF metadata whose keys start with `prefix`: ints, floats, bools, strings and lists.");
}
