"""Helpers of the PairSegTrainer Slicer module, one concern per file.

- ``runsettings``: TrainingSettings, a run's settings as a parameter pack generated from the
  engine's schema (``pairseg.config``), its run file and the engine command line (torchrun for
  many GPUs)
- ``trainingset``: scene (volume, segmentation) pairs -> image/label files + dataset.json
- ``trainingrun``: TrainingRun, a training on the PairSeg module's engine bridge (curves, plots,
  model registration)
- ``plots``: live loss / validation-Dice curves in Slicer plot nodes
- ``proxymapnodes``: AND/XOR proxy maps of a slice pair as MRML nodes (the engine's
  ``pairseg.proxymaps`` writes them as files)
- ``trainerlogic``: PairSegTrainerCoreLogic, the scriptable API tying them together (the module
  file's PairSegTrainerLogic adds Slicer's ScriptedLoadableModuleLogic to it)
- ``widget``: TrainerPanel, the GUI wiring

Nothing here imports torch or the engine at file scope. The PairSeg module (a declared
dependency of this one) provides ``PairSegLib``: the engine bridge, MRML import/export, models.
"""

from .runsettings import ARCHITECTURES, ConfigError, settingsPack  # noqa: F401
from .trainingrun import EngineError, TrainingRun  # noqa: F401
from .trainingset import TrainingItem, TrainingSetError  # noqa: F401
from .trainerlogic import PairSegTrainerCoreLogic  # noqa: F401


def __getattr__(name):
    """``TrainingSettings``: the settings pack of the running Slicer (``runsettings.settingsPack()``)."""
    if name == "TrainingSettings":
        return settingsPack()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
