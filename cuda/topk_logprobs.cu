// placeholder; filled in by the kernels work (issue 5).
#include <cuda_runtime.h>
