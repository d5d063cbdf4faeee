"""Helpers of the PairSegTrainer Slicer module, one concern per file.

- ``config``: TrainingConfig (all defaults) and the engine command line (torchrun for many GPUs)
- ``trainingset``: scene (volume, segmentation) pairs -> image/label files + dataset.json
- ``job``: training runs on the PairSeg module's engine bridge (curves, plots, model registration)
- ``plots``: live loss / validation-Dice curves in Slicer plot nodes
- ``proxymaps``: AND/XOR proxy maps of a slice pair as MRML nodes
- ``logic``: PairSegTrainerLogic, the scriptable API tying them together

Nothing here imports torch or the engine at file scope. The PairSeg module (a declared
dependency of this one) provides ``PairSegLib``: the engine bridge, MRML import/export, models.
"""

from .config import ARCHITECTURES, TrainingConfig, ConfigError  # noqa: F401
from .job import JobError, TrainingRun  # noqa: F401
from .trainingset import TrainingItem, TrainingSetError  # noqa: F401
from .logic import PairSegTrainerLogic, TrainingJob  # noqa: F401
