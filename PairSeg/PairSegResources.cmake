# The ready-model catalog (Resources/Models) and the embedded sample case (Resources/SampleData,
# CC BY-SA 4.0 with its README) of the repository's top level, placed where the engine looks for
# them (pairseg.modelfiles.catalog.catalog_folder / sample_folder: Resources/<kind> beside the pairseg
# package, i.e. in the scripted-modules folder):
# - build tree: copied at build time by the PairSegResources target (copy_if_different, so an
#   edited catalog is copied again), so that the ctest self-tests run from the build tree find them;
# - install tree (and so the extension package): install(FILES).
# Needs PAIRSEG_SOURCE_DIR (the repository's top level), Slicer_QTSCRIPTEDMODULES_LIB_DIR and
# Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR (set by the Slicer SDK).

if(NOT DEFINED PAIRSEG_SOURCE_DIR)
  set(PAIRSEG_SOURCE_DIR "${PROJECT_SOURCE_DIR}")
endif()

set(PAIRSEG_RESOURCE_OUTPUTS)
foreach(kind IN ITEMS Models SampleData)
  file(GLOB _pairseg_files LIST_DIRECTORIES false CONFIGURE_DEPENDS "${PAIRSEG_SOURCE_DIR}/Resources/${kind}/*")
  if(NOT _pairseg_files)
    message(FATAL_ERROR "PairSeg: ${PAIRSEG_SOURCE_DIR}/Resources/${kind} holds no file")
  endif()
  foreach(_pairseg_file IN LISTS _pairseg_files)
    get_filename_component(_pairseg_name "${_pairseg_file}" NAME)
    set(_pairseg_output "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/Resources/${kind}/${_pairseg_name}")
    add_custom_command(
      OUTPUT "${_pairseg_output}"
      COMMAND ${CMAKE_COMMAND} -E copy_if_different "${_pairseg_file}" "${_pairseg_output}"
      DEPENDS "${_pairseg_file}"
      COMMENT "PairSeg: Resources/${kind}/${_pairseg_name} into the build tree"
      VERBATIM)
    list(APPEND PAIRSEG_RESOURCE_OUTPUTS "${_pairseg_output}")
  endforeach()
  install(FILES ${_pairseg_files}
    DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/Resources/${kind}
    COMPONENT RuntimeLibraries)
endforeach()
add_custom_target(PairSegResources ALL DEPENDS ${PAIRSEG_RESOURCE_OUTPUTS})
