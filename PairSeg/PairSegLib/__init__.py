"""Helpers of the PairSeg Slicer module, shared with PairSegTrainer (logic, the engine bridge,
MRML conversion, overlays, model registry, dependency installation, sample data). Only stdlib,
slicer, vtk, numpy and scipy are imported here; torch and the engine run in a background process."""

from .engine import EngineError, EngineLauncher, EngineRun, RunState, engineRoot, pythonExecutable
from .install import DependencyError
from .segmentlogic import (DEVICES, ComparisonResult, ComparisonRun, PairSegCoreLogic, SegmentationError,
                    SegmentationRun)
from .models import ModelFileError, ModelRegistry, describeModel, readModelMetadata
from .mrml import InputError
from .terminology import terminologyEntry

__all__ = ["EngineError", "EngineLauncher", "EngineRun", "RunState", "engineRoot", "pythonExecutable",
           "DependencyError", "DEVICES", "ComparisonResult", "ComparisonRun", "PairSegCoreLogic",
           "SegmentationError", "SegmentationRun", "ModelFileError", "ModelRegistry", "describeModel",
           "readModelMetadata", "InputError", "terminologyEntry"]
