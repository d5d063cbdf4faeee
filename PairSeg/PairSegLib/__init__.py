"""Helpers of the PairSeg Slicer module (logic, process runner, MRML conversion, overlays,
model registry, dependency installation). Only stdlib, slicer, vtk, numpy and scipy are imported
here; torch and the engine are imported at the point of use, in a background process."""

from .engine import EngineProcess, engineRoot, pythonExecutable
from .logic import (DEVICES, ComparisonResult, PairSegCoreLogic, SegmentationCancelled,
                    SegmentationError, SegmentationTask, State)
from .models import ModelFileError, ModelRegistry, describeModel, readModelMetadata
from .mrml import InputError
from .terminology import terminologyEntry

__all__ = ["EngineProcess", "engineRoot", "pythonExecutable", "DEVICES", "ComparisonResult",
           "PairSegCoreLogic", "SegmentationCancelled", "SegmentationError", "SegmentationTask",
           "State", "ModelFileError", "ModelRegistry", "describeModel", "readModelMetadata",
           "InputError", "terminologyEntry"]
