"""Helpers of the PairSegTrainer Slicer module, one concern per file.

- ``config``: TrainingSettings, the run's settings as a parameter pack generated from the engine's
  schema, its run file and the engine command line (torchrun for many GPUs)
- ``trainingset``: scene (volume, segmentation) pairs -> image/label files + dataset.json
- ``job``: training runs on the PairSeg module's engine bridge (curves, plots, model registration)
- ``plots``: live loss / validation-Dice curves in Slicer plot nodes
- ``proxymaps``: AND/XOR proxy maps of a slice pair as MRML nodes
- ``logic``: PairSegTrainerLogic, the scriptable API tying them together

Nothing here imports torch or the engine at file scope. The PairSeg module (a declared
dependency of this one) provides ``PairSegLib``: the engine bridge, MRML import/export, models.
"""

from .config import ARCHITECTURES, ConfigError, settingsPack  # noqa: F401
from .job import JobError, TrainingRun  # noqa: F401
from .trainingset import TrainingItem, TrainingSetError  # noqa: F401
from .logic import PairSegTrainerLogic, TrainingJob  # noqa: F401


def __getattr__(name):
    """``TrainingSettings``: the settings pack of the running Slicer (``config.settingsPack()``)."""
    if name == "TrainingSettings":
        return settingsPack()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
