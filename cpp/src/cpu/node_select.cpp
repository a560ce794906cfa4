// placeholder; filled in by the node_select work (issue 5).
#include "cpu/cpu_ops.h"
