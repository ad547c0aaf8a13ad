#pragma once
// Each bindings/*.cc file registers the part of fastlm._core it defines:
//   FASTLM_BINDING(ops) { auto sub = m.def_submodule("ops"); ... }
// module.cc runs them in name order when the module is imported.
#include <pybind11/pybind11.h>

namespace fastlm::bindings {

using InitFn = void (*)(pybind11::module_&);
int register_binding(const char* name, InitFn fn);

}  // namespace fastlm::bindings

#define FASTLM_BINDING(name)                                            \
  static void fastlm_init_##name(pybind11::module_& m);                 \
  [[maybe_unused]] static const int fastlm_reg_##name =                 \
      ::fastlm::bindings::register_binding(#name, &fastlm_init_##name); \
  static void fastlm_init_##name(pybind11::module_& m)
