// Umbrella header for C++ users of the difftree core.
#pragma once

#include "difftree/build_info.h"
#include "difftree/ops.h"
#include "difftree/status.h"
#include "difftree/tensor.h"
#include "difftree/threads.h"
#include "difftree/tree.h"
