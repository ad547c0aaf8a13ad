# nlohmann/json (Debian: nlohmann-json3-dev), header-only.
find_package(nlohmann_json 3.2.0 CONFIG REQUIRED)
add_library(fastlm::json INTERFACE IMPORTED)
target_link_libraries(fastlm::json INTERFACE nlohmann_json::nlohmann_json)
