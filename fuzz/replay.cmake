# replay.cmake: the fuzz targets as regular tests, in any build (gcc too).
# Included from tests/CMakeLists.txt when the message layer is built.
#
# replay_frame and replay_dispatch link a target's LLVMFuzzerTestOneInput
# with fuzz/replay_main.c instead of libFuzzer, and run it over the
# committed seed corpus (fuzz/corpus/<target>/) and every past crasher
# (fuzz/crashers/, given to both targets). A failed check aborts: the test
# fails. Under ZNET_ASAN the replay runs with the sanitizers too.

include(${PROJECT_SOURCE_DIR}/fuzz/fuzz_pb.cmake)

set(ZNET_FUZZ_DIR ${PROJECT_SOURCE_DIR}/fuzz)
foreach(target frame dispatch buf heap)
  add_executable(replay_${target} ${ZNET_FUZZ_DIR}/fuzz_${target}.c
      ${ZNET_FUZZ_DIR}/replay_main.c)
  target_link_libraries(replay_${target} PRIVATE znet_msg znet_fuzz_pb)
  target_include_directories(replay_${target} PRIVATE ${PROJECT_SOURCE_DIR}/src)
  target_compile_options(replay_${target} PRIVATE ${ZNET_WARNINGS})
  target_compile_definitions(replay_${target} PRIVATE _GNU_SOURCE)
  add_test(NAME replay_${target} COMMAND replay_${target}
      ${ZNET_FUZZ_DIR}/corpus/${target} ${ZNET_FUZZ_DIR}/crashers)
  set_tests_properties(replay_${target} PROPERTIES TIMEOUT 60 LABELS msg)
endforeach()
