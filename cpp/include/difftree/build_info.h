// What this build of the difftree core contains.
#pragma once

#include <string>

namespace difftree {

struct BuildInfo {
  bool cuda_compiled;
  std::string cuda_architectures;  // e.g. "80;90a", empty without CUDA
  std::string cuda_version;        // nvcc version the kernels were built with, empty without CUDA
  std::string compiler;            // host C++ compiler and version
  std::string git_sha;
  std::string version;
};

const BuildInfo& build_info();

}  // namespace difftree
