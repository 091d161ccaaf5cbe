# The README shows examples/rpc_server.c whole: the fenced block after the
# marker line must be the file, byte for byte. Run by CTest as
# test_readme_example:
#
#   cmake -DREADME=README.md -DEXAMPLE=examples/rpc_server.c \
#         -P tests/readme_example.cmake
#
# To fix a failure, copy the file into the block (or the block into the
# file, if the README was edited on purpose).
set(marker "<!-- examples/rpc_server.c, whole")
file(READ ${README} readme)
file(READ ${EXAMPLE} example)

string(FIND "${readme}" "${marker}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "${README}: no line starting with '${marker}'")
endif()
string(SUBSTRING "${readme}" ${at} -1 rest)
string(FIND "${rest}" "\n```c\n" open)
if(open EQUAL -1)
  message(FATAL_ERROR "${README}: no ```c block after the marker")
endif()
math(EXPR open "${open} + 6")
string(SUBSTRING "${rest}" ${open} -1 rest)
string(FIND "${rest}" "\n```\n" close)
if(close EQUAL -1)
  message(FATAL_ERROR "${README}: the block after the marker is not closed")
endif()
math(EXPR close "${close} + 1")
string(SUBSTRING "${rest}" 0 ${close} block)

if(NOT block STREQUAL example)
  file(WRITE ${CMAKE_CURRENT_BINARY_DIR}/readme_example.block "${block}")
  message(FATAL_ERROR "the README's block differs from ${EXAMPLE}; the "
      "block is in ${CMAKE_CURRENT_BINARY_DIR}/readme_example.block: "
      "diff -u it against the file, then make them agree")
endif()
message(STATUS "README block == ${EXAMPLE}")
