# oneDNN (Debian: libdnnl-dev; elsewhere any install that ships dnnl-config.cmake).
find_package(dnnl CONFIG REQUIRED)
add_library(fastlm::dnnl INTERFACE IMPORTED)
target_link_libraries(fastlm::dnnl INTERFACE DNNL::dnnl)
