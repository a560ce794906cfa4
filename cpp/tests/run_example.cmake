# ctest driver for cpp/examples: proves that an outside project can find_package(difftree).
#   cmake -DDIFFTREE_BUILD_DIR=<core build> -DEXAMPLES_SOURCE_DIR=<cpp/examples> -DWORK_DIR=<tmp>
#         [-DCONFIG=<cfg>] [-DGENERATOR=<gen>] [-DMAKE_PROGRAM=<prog>] [-DCXX_COMPILER=<c++>]
#         [-DC_COMPILER=<cc>]
#         [-DCUDA_COMPILER=<nvcc>] [-DCUDA_TOOLKIT_ROOT=<dir>] [-DEXTRA_FLAGS=<cxx+link flags>]
#         -P run_example.cmake
# 1. cmake --install <core build> --prefix <tmp>/prefix --component cpp
# 2. configure + build cpp/examples against it (CMAKE_PREFIX_PATH=<tmp>/prefix)
# 3. run select_and_walk (C++ API) and c_example (C ABI)
cmake_minimum_required(VERSION 3.24)

foreach(_var DIFFTREE_BUILD_DIR EXAMPLES_SOURCE_DIR WORK_DIR)
  if(NOT ${_var})
    message(FATAL_ERROR "run_example.cmake: -D${_var}=... is required")
  endif()
endforeach()
if(NOT CONFIG)
  set(CONFIG Release)
endif()

function(run_step what)
  message(STATUS "[example] ${what}: ${ARGN}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "[example] ${what} failed (${_rc})")
  endif()
endfunction()

set(_prefix "${WORK_DIR}/prefix")
set(_build "${WORK_DIR}/build")
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

run_step("install the core" ${CMAKE_COMMAND} --install "${DIFFTREE_BUILD_DIR}"
         --prefix "${_prefix}" --component cpp --config ${CONFIG})

set(_configure ${CMAKE_COMMAND} -S "${EXAMPLES_SOURCE_DIR}" -B "${_build}"
    "-DCMAKE_PREFIX_PATH=${_prefix}" "-DCMAKE_BUILD_TYPE=${CONFIG}")
if(GENERATOR)
  list(APPEND _configure -G "${GENERATOR}")
endif()
if(MAKE_PROGRAM)
  list(APPEND _configure "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(CXX_COMPILER)
  list(APPEND _configure "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
if(C_COMPILER)
  list(APPEND _configure "-DCMAKE_C_COMPILER=${C_COMPILER}")
endif()
if(EXTRA_FLAGS)
  list(APPEND _configure "-DCMAKE_CXX_FLAGS=${EXTRA_FLAGS}" "-DCMAKE_C_FLAGS=${EXTRA_FLAGS}"
       "-DCMAKE_EXE_LINKER_FLAGS=${EXTRA_FLAGS}")
endif()
if(CUDA_COMPILER)
  list(APPEND _configure "-DCMAKE_CUDA_COMPILER=${CUDA_COMPILER}")
endif()
if(CUDA_TOOLKIT_ROOT)
  list(APPEND _configure "-DCUDAToolkit_ROOT=${CUDA_TOOLKIT_ROOT}")
endif()
run_step("configure the examples" ${_configure})
run_step("build the examples" ${CMAKE_COMMAND} --build "${_build}" --config ${CONFIG})

foreach(_program select_and_walk c_example)
  set(_exe "${_build}/${_program}")
  if(NOT EXISTS "${_exe}" AND EXISTS "${_build}/${CONFIG}/${_program}${CMAKE_EXECUTABLE_SUFFIX}")
    set(_exe "${_build}/${CONFIG}/${_program}")  # multi-config generators
  endif()
  run_step("run ${_program}" "${_exe}")
endforeach()
