#include "difftree/build_info.h"

// The build system defines these; the fallbacks keep a hand-rolled build compiling.
#ifndef DIFFTREE_GIT_SHA
#define DIFFTREE_GIT_SHA "unknown"
#endif
#ifndef DIFFTREE_VERSION
#define DIFFTREE_VERSION "0.0.0"
#endif
#ifndef DIFFTREE_CUDA_ARCHITECTURES
#define DIFFTREE_CUDA_ARCHITECTURES ""
#endif
#ifndef DIFFTREE_CUDA_VERSION
#define DIFFTREE_CUDA_VERSION ""
#endif
#ifndef DIFFTREE_CXX_COMPILER
#define DIFFTREE_CXX_COMPILER "unknown"
#endif

namespace difftree {

const BuildInfo& build_info() {
  static const BuildInfo info{
#ifdef DIFFTREE_WITH_CUDA
      true,
#else
      false,
#endif
      DIFFTREE_CUDA_ARCHITECTURES, DIFFTREE_CUDA_VERSION, DIFFTREE_CXX_COMPILER,
      DIFFTREE_GIT_SHA, DIFFTREE_VERSION};
  return info;
}

}  // namespace difftree
