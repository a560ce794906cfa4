// DIFFTREE_HOST_DEVICE marks the functions of common/ that both the CPU ops and the CUDA kernels
// compile, so the two paths share one definition.
#pragma once

#if defined(__CUDACC__)
#define DIFFTREE_HOST_DEVICE __host__ __device__
#else
#define DIFFTREE_HOST_DEVICE
#endif
