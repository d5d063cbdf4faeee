# Registers the repository's pytest suite (engine tests/ and Slicer-module Testing/) with ctest as
# the test PairSegPytest, run in the source tree. Its interpreter is PAIRSEG_TEST_PYTHON (a Python
# with the test requirements: `bash scripts/test.sh` makes one in <source>/.venv, the default when
# it exists). Without one, the test is not registered and configure says why. Needs
# PAIRSEG_SOURCE_DIR (default PROJECT_SOURCE_DIR) and enable_testing() / BUILD_TESTING.

if(NOT DEFINED PAIRSEG_SOURCE_DIR)
  set(PAIRSEG_SOURCE_DIR "${PROJECT_SOURCE_DIR}")
endif()

if(WIN32)
  set(_pairseg_venv_python "${PAIRSEG_SOURCE_DIR}/.venv/Scripts/python.exe")
else()
  set(_pairseg_venv_python "${PAIRSEG_SOURCE_DIR}/.venv/bin/python")
endif()
set(_pairseg_default_python "")
if(EXISTS "${_pairseg_venv_python}")
  set(_pairseg_default_python "${_pairseg_venv_python}")
endif()
set(PAIRSEG_TEST_PYTHON "${_pairseg_default_python}" CACHE FILEPATH
  "Python with PairSeg's test requirements (scripts/test.sh makes <source>/.venv) for the ctest test PairSegPytest")

if(PAIRSEG_TEST_PYTHON)
  add_test(NAME PairSegPytest
    COMMAND "${PAIRSEG_TEST_PYTHON}" -m pytest -q tests Testing
    WORKING_DIRECTORY "${PAIRSEG_SOURCE_DIR}")
  set_tests_properties(PairSegPytest PROPERTIES TIMEOUT 3600 LABELS "PairSeg;pytest"
    ENVIRONMENT "QT_QPA_PLATFORM=offscreen")
else()
  message(STATUS "PairSeg: the pytest suite is not registered with ctest: no ${_pairseg_venv_python} "
                 "(run scripts/test.sh) and PAIRSEG_TEST_PYTHON not set")
endif()
