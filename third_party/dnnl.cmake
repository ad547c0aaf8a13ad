# oneDNN 3.2 with GNU OpenMP, from PyPI: `onednn-devel-cpu-gomp` (headers + dnnl-config.cmake, a
# build requirement) and `onednn-cpu-gomp` (libdnnl.so.3, a runtime dependency). Their files sit
# under the installing prefix, which is not sys.prefix inside pip's isolated build environment,
# so the interpreter that runs the build is asked where the distribution's files are.
find_package(Python 3.11 COMPONENTS Interpreter REQUIRED)
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
          "import importlib.metadata as m; d = m.distribution('onednn-devel-cpu-gomp'); \
f = next(f for f in d.files if f.name == 'dnnl-config.cmake'); \
print(d.locate_file(f).resolve().parent, end='')"
  OUTPUT_VARIABLE FASTLM_DNNL_CONFIG_DIR
  RESULT_VARIABLE _fastlm_dnnl_rc
  ERROR_QUIET)
if(_fastlm_dnnl_rc EQUAL 0 AND IS_DIRECTORY "${FASTLM_DNNL_CONFIG_DIR}")
  set(dnnl_DIR "${FASTLM_DNNL_CONFIG_DIR}" CACHE PATH "oneDNN's CMake config" FORCE)
endif()
# Else CMAKE_PREFIX_PATH / dnnl_DIR. 3.x only: Debian's libdnnl-dev (2.x) has another API.
find_package(dnnl 3.2 CONFIG REQUIRED)
message(STATUS "oneDNN ${dnnl_VERSION}: ${dnnl_DIR}")
add_library(fastlm::dnnl INTERFACE IMPORTED)
target_link_libraries(fastlm::dnnl INTERFACE DNNL::dnnl)
