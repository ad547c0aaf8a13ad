// fastlm._core: the pybind11 module. Parts register themselves (registry.h).
#include <map>
#include <string>

#include "bindings/registry.h"
#include "core/status.h"

namespace py = pybind11;

namespace fastlm::bindings {

static std::map<std::string, InitFn>& registry() {
  static std::map<std::string, InitFn> r;
  return r;
}

int register_binding(const char* name, InitFn fn) {
  registry()[name] = fn;
  return 0;
}

}  // namespace fastlm::bindings

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastlm C++ runtime";
  // User-caused errors surface as ValueError, everything else as RuntimeError. pybind11 tries
  // translators newest first, so the derived InvalidArgument is registered last.
  py::register_exception<fastlm::Error>(m, "FastlmError", PyExc_RuntimeError);
  py::register_exception<fastlm::InvalidArgument>(m, "InvalidArgument", PyExc_ValueError);
  for (auto& [name, fn] : fastlm::bindings::registry()) fn(m);
}
