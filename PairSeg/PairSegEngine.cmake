# Ships the PairSeg engine (the `pairseg` package in the repository's src/ folder) inside the
# extension: its Python files are copied, byte-compiled and installed into the scripted-modules
# folder, so `import pairseg` and `PythonSlicer -m pairseg` work in Slicer without a separate
# install. Paths are relative to src/. Keep this list in sync with src/pairseg/
# (Testing/test_pairseg_module.py checks that every src/pairseg/**/*.py is listed).
# PAIRSEG_SOURCE_DIR: the repository's top level (default PROJECT_SOURCE_DIR; the layout test of
# Testing/test_cmake_layout.py includes this file from a project of its own).

if(NOT DEFINED PAIRSEG_SOURCE_DIR)
  set(PAIRSEG_SOURCE_DIR "${PROJECT_SOURCE_DIR}")
endif()

set(PAIRSEG_ENGINE_PYTHON_SCRIPTS
  pairseg/__init__.py
  pairseg/__main__.py
  pairseg/annotation.py
  pairseg/architectures.py
  pairseg/atomic.py
  pairseg/augment.py
  pairseg/cli.py
  pairseg/config.py
  pairseg/constants.py
  pairseg/data.py
  pairseg/datasets.py
  pairseg/demo.py
  pairseg/devices.py
  pairseg/distributed.py
  pairseg/errors.py
  pairseg/events.py
  pairseg/fill.py
  pairseg/infer.py
  pairseg/io/__init__.py
  pairseg/io/dicom.py
  pairseg/io/locations.py
  pairseg/io/nifti.py
  pairseg/io/nrrd_mha.py
  pairseg/io/problems.py
  pairseg/io/read.py
  pairseg/io/segmentation.py
  pairseg/io/volume.py
  pairseg/io/write.py
  pairseg/losses.py
  pairseg/metrics.py
  pairseg/modelfiles/__init__.py
  pairseg/modelfiles/catalog.py
  pairseg/modelfiles/fileformat.py
  pairseg/modelfiles/weights.py
  pairseg/networks/__init__.py
  pairseg/networks/base.py
  pairseg/networks/deeplab.py
  pairseg/networks/pairwise.py
  pairseg/networks/resnet.py
  pairseg/networks/unet.py
  pairseg/orientation.py
  pairseg/pairs.py
  pairseg/paths.py
  pairseg/phantoms.py
  pairseg/postprocess.py
  pairseg/proxy.py
  pairseg/proxymaps.py
  pairseg/train.py
  pairseg/uncertainty.py
  )

ctkMacroCompilePythonScript(
  TARGET_NAME PairSegEngine
  SCRIPTS "${PAIRSEG_ENGINE_PYTHON_SCRIPTS}"
  RESOURCES ""
  SOURCE_DIR ${PAIRSEG_SOURCE_DIR}/src
  DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}
  INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}
  NO_INSTALL_SUBDIR
  )

# The ready-model catalog and the embedded sample case beside the engine, in the build tree (for
# ctest self-tests run there) and in the install tree.
include(${CMAKE_CURRENT_LIST_DIR}/PairSegResources.cmake)
