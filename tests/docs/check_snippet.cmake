# SPDX-License-Identifier: Apache-2.0
# Checks that DOC contains, verbatim, the code between "// example-begin NAME" and
# "// example-end NAME" in SOURCE (one indentation level of two spaces removed): docs show only
# code the build compiles. Usage: cmake -DSOURCE=… -DDOC=… -DNAME=… -P check_snippet.cmake
file(READ "${SOURCE}" src)
file(READ "${DOC}" doc)
string(FIND "${src}" "// example-begin ${NAME}\n" b)
string(FIND "${src}" "// example-end ${NAME}" e)
if(b EQUAL -1 OR e EQUAL -1)
  message(FATAL_ERROR "markers for '${NAME}' not found in ${SOURCE}")
endif()
string(LENGTH "// example-begin ${NAME}\n" skip)
math(EXPR b "${b} + ${skip}")
math(EXPR n "${e} - ${b}")
string(SUBSTRING "${src}" ${b} ${n} block)
# Drop the two-space indentation of the function body and the indentation before the end marker.
string(REGEX REPLACE "(^|\n)  " "\\1" block "${block}")
string(REGEX REPLACE "\n[ ]*$" "\n" block "${block}")
string(FIND "${doc}" "${block}" found)
if(found EQUAL -1)
  message(FATAL_ERROR "${DOC} does not contain the '${NAME}' snippet of ${SOURCE} verbatim:\n${block}")
endif()
message(STATUS "snippet '${NAME}' of ${SOURCE} found in ${DOC}")
