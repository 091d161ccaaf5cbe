# ZnetProtobuf.cmake: protobuf-c for znet and for the projects that use it.
#
# Including this file (installed with znet's CMake package) finds
#   - protoc-c (Debian: protobuf-c-compiler), in ZNET_PROTOC_C_EXECUTABLE;
#   - libprotobuf-c through pkg-config, as the imported target
#     PkgConfig::PROTOBUF_C (Debian: libprotobuf-c-dev);
# and defines
#
#   znet_protobuf_generate(<srcs_var> <hdrs_var>
#                          PROTOS <a.proto> [<b.proto> ...]
#                          [IMPORT_DIRS <dir> ...]
#                          [OUT_DIR <dir>])
#
# which adds build rules that run protoc-c at build time and sets <srcs_var>
# and <hdrs_var> to the generated .pb-c.c and .pb-c.h files, to be listed in
# a target's sources. Nothing is generated in the source tree.
#
#   PROTOS       the .proto files (relative to the current source directory
#                or absolute).
#   IMPORT_DIRS  the directories protoc-c searches for imports (-I). Each
#                proto must lie under one of them; its path relative to that
#                directory is kept in the output names (dir/x.proto gives
#                <OUT_DIR>/dir/x.pb-c.c). Default: each proto's own directory.
#   OUT_DIR      where the files go; default ${CMAKE_CURRENT_BINARY_DIR}.
#                Add it to the target's include directories.
#
# Example:
#   include(ZnetProtobuf)   # or find_package(znet), which includes it
#   znet_protobuf_generate(PB_SRCS PB_HDRS PROTOS proto/app.proto)
#   add_executable(app main.c ${PB_SRCS})
#   target_include_directories(app PRIVATE ${CMAKE_CURRENT_BINARY_DIR})
#   target_link_libraries(app PRIVATE PkgConfig::PROTOBUF_C)
#
# Must be called in the directory that defines the target using the files
# (a CMake rule for generated files).

include_guard(GLOBAL)
if(CMAKE_VERSION VERSION_LESS 3.13)
  message(FATAL_ERROR "ZnetProtobuf.cmake needs CMake 3.13 or newer")
endif()

find_package(PkgConfig REQUIRED)
if(NOT TARGET PkgConfig::PROTOBUF_C)
  pkg_check_modules(PROTOBUF_C REQUIRED IMPORTED_TARGET GLOBAL libprotobuf-c)
endif()

find_program(ZNET_PROTOC_C_EXECUTABLE NAMES protoc-c
    DOC "protoc-c, the protobuf-c code generator")
if(NOT ZNET_PROTOC_C_EXECUTABLE)
  message(FATAL_ERROR "znet: protoc-c not found "
      "(Debian: apt-get install protobuf-c-compiler), "
      "or set ZNET_PROTOC_C_EXECUTABLE")
endif()

# The import directory that holds proto (absolute), and proto's path
# relative to it without ".proto"; fails if no directory holds it.
function(_znet_protobuf_locate proto dirs root_var stem_var)
  foreach(dir IN LISTS dirs)
    file(RELATIVE_PATH rel "${dir}" "${proto}")
    if(NOT rel MATCHES "^\\.\\./" AND NOT IS_ABSOLUTE "${rel}")
      string(REGEX REPLACE "\\.proto$" "" stem "${rel}")
      set(${root_var} "${dir}" PARENT_SCOPE)
      set(${stem_var} "${stem}" PARENT_SCOPE)
      return()
    endif()
  endforeach()
  message(FATAL_ERROR "znet_protobuf_generate: ${proto} is not under any "
      "of the IMPORT_DIRS (${dirs})")
endfunction()

function(znet_protobuf_generate srcs_var hdrs_var)
  cmake_parse_arguments(ZPG "" "OUT_DIR" "PROTOS;IMPORT_DIRS" ${ARGN})
  if(NOT ZPG_PROTOS)
    message(FATAL_ERROR "znet_protobuf_generate: no PROTOS given")
  endif()
  if(ZPG_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR
        "znet_protobuf_generate: unknown arguments ${ZPG_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT ZPG_OUT_DIR)
    set(ZPG_OUT_DIR "${CMAKE_CURRENT_BINARY_DIR}")
  endif()
  get_filename_component(out "${ZPG_OUT_DIR}" ABSOLUTE
      BASE_DIR "${CMAKE_CURRENT_BINARY_DIR}")

  set(import_dirs "")
  foreach(dir IN LISTS ZPG_IMPORT_DIRS)
    get_filename_component(dir "${dir}" ABSOLUTE)
    list(APPEND import_dirs "${dir}")
  endforeach()
  # Every proto of the call is a dependency of each output: an import that
  # changes regenerates the files that import it.
  set(all_protos "")
  foreach(proto IN LISTS ZPG_PROTOS)
    get_filename_component(proto "${proto}" ABSOLUTE)
    list(APPEND all_protos "${proto}")
  endforeach()

  set(srcs "")
  set(hdrs "")
  foreach(proto IN LISTS all_protos)
    set(dirs "${import_dirs}")
    if(NOT dirs)
      get_filename_component(dirs "${proto}" DIRECTORY)
    endif()
    _znet_protobuf_locate("${proto}" "${dirs}" root stem)
    set(flags "-I${root}")
    foreach(dir IN LISTS dirs)
      if(NOT dir STREQUAL root)
        list(APPEND flags "-I${dir}")
      endif()
    endforeach()
    set(c "${out}/${stem}.pb-c.c")
    set(h "${out}/${stem}.pb-c.h")
    add_custom_command(OUTPUT "${c}" "${h}"
        COMMAND "${CMAKE_COMMAND}" -E make_directory "${out}"
        COMMAND "${ZNET_PROTOC_C_EXECUTABLE}" "--c_out=${out}" ${flags}
                "${proto}"
        DEPENDS ${all_protos} "${ZNET_PROTOC_C_EXECUTABLE}"
        COMMENT "protoc-c ${stem}.proto"
        VERBATIM)
    list(APPEND srcs "${c}")
    list(APPEND hdrs "${h}")
  endforeach()
  set(${srcs_var} ${srcs} PARENT_SCOPE)
  set(${hdrs_var} ${hdrs} PARENT_SCOPE)
endfunction()
