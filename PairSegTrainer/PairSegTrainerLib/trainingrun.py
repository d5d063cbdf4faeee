"""Training runs: the PairSeg module's engine bridge (``PairSegLib.engine.EngineRun``) with the
hooks a training needs: live curves from the engine's events, plot updates, and model
registration when the model file is written.

States are the bridge's (``RunState``): starting -> running -> done | failed | cancelled; a run
stopped on request ends ``cancelled`` and, when the engine left its checkpoint, is resumable.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from PairSegLib.engine import EngineError, EngineRun, RunState, formatDuration  # noqa: F401 - re-exported

#: Stop escalates on every OS: the stop file (and SIGTERM on POSIX; the engine saves its
#: checkpoint at the next step), then the whole process tree is killed when the engine is still
#: there this many seconds later (a hung engine, a stalled data loader, a Windows engine that
#: never reads the stop file). Seconds; a checkpoint save takes a few seconds at most.
STOP_KILL_SECONDS = 60.0


@dataclass
class Curves:
    """Training curves collected from the events (plain lists, ready for plotting)."""

    lossSteps: list = field(default_factory=list)
    lossValues: list = field(default_factory=list)
    valEpochs: list = field(default_factory=list)
    meanDice: list = field(default_factory=list)
    classDice: dict = field(default_factory=dict)   # class name -> list aligned with valEpochs

    def addLoss(self, step, loss) -> None:
        if loss is None:
            return
        self.lossSteps.append(float(step))
        self.lossValues.append(float(loss))

    def addValidation(self, epoch, dice: dict, meanDice) -> None:
        self.valEpochs.append(float(epoch))
        count = len(self.valEpochs)
        for name, value in (dice or {}).items():
            values = self.classDice.setdefault(str(name), [])
            values.extend([float("nan")] * (count - 1 - len(values)))
            values.append(float("nan") if value is None else float(value))
        for values in self.classDice.values():
            values.extend([float("nan")] * (count - len(values)))
        if meanDice is None:
            finite = [float(v) for v in (dice or {}).values() if v is not None]
            meanDice = sum(finite) / len(finite) if finite else float("nan")
        self.meanDice.append(float(meanDice))


class TrainingRun(EngineRun):
    """A training: ``pairseg train`` (torchrun for several GPUs) with live curves and plots, and
    the model registered for the PairSeg module when it is written.

    ``settings``: the run's TrainingSettings (its ``commandLine()`` and ``stop_file``); ``logic``:
    the PairSegTrainerLogic (``registerModel``); ``plots``: a TrainingPlots or None; ``command``:
    the command that ``settings.commandLine()`` returned (default: call it; a stand-in engine in
    tests)."""

    name = "training"

    def __init__(self, settings, logic, launcher=None, plots=None, register: bool = True, modelName: str = "",
                 command=None, ensureEngine: bool = True):
        super().__init__(command=command or settings.commandLine(), launcher=launcher,
                         stopFile=settings.stop_file or None, ensureEngine=ensureEngine)
        self.settings = settings
        self.logic = logic
        self.plots = plots
        self.register = register
        self.modelName = modelName
        self.curves = Curves()
        self.checkpoint = None
        self.modelPath = None        # set when the model file is written and registered
        self.metadata = None
        self._plotted = (-1, -1)
        self._lastPlot = 0.0
        self.plotInterval = 0.5

    def poll(self) -> bool:
        running = super().poll()
        self.updatePlots(force=not running)
        return running

    def updatePlots(self, force: bool = False) -> None:
        if self.plots is None:
            return
        size = (len(self.curves.lossValues), len(self.curves.valEpochs))
        now = time.monotonic()
        if size != self._plotted and (force or now - self._lastPlot >= self.plotInterval):
            self.plots.update(self.curves)
            self._plotted = size
            self._lastPlot = now

    def handleEvent(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "progress" and event.get("loss") is not None:
            self.curves.addLoss(self.step if self.step is not None else len(self.curves.lossSteps), self.loss)
        elif kind == "validation":
            self.curves.addValidation(event.get("epoch", len(self.curves.valEpochs)),
                                      event.get("dice") or {}, event.get("mean_dice"))
            self._appendLog(f"Validation epoch {event.get('epoch')}: mean Dice {_fmt(event.get('mean_dice'))} "
                            + ", ".join(f"{k} {_fmt(v)}" for k, v in (event.get("dice") or {}).items()))
        elif kind == "checkpoint":
            self.checkpoint = event.get("path")
            self._appendLog(f"Checkpoint saved: {self.checkpoint}")
        elif kind == "stopped":
            self.checkpoint = event.get("checkpoint", self.checkpoint)
            self._appendLog(f"Stopped at step {event.get('step')} of {event.get('total')}.")
        elif kind == "done":
            self._appendLog("Done: " + ", ".join(self.outputs))

    def completingText(self) -> str:
        return "Registering the model"

    def completed(self) -> str:
        output = self.outputs[0] if self.outputs else self.settings.out
        if not Path(output).is_file():
            raise EngineError(f"training reported success but {output} does not exist")
        self.modelPath = str(output)
        if self.register:
            try:
                self.metadata = self.logic.registerModel(self.modelPath, self.modelName or None)
                self._appendLog(f"Model registered: {self.modelPath}")
            except Exception as error:  # registration must not turn a trained model into a failure
                self._appendLog(f"Model written but not registered: {error}")
        return f"Finished in {formatDuration(self.elapsedSeconds)}: {self.modelPath}"

    def finished(self) -> None:
        if self.state == RunState.CANCELLED:
            self._appendLog("Stopped" + (f"; resumable checkpoint {self.checkpoint}" if self.checkpoint else "") + ".")
        if self.stopFile and os.path.exists(self.stopFile):
            try:
                os.remove(self.stopFile)
            except OSError:
                pass

    @property
    def resumable(self) -> bool:
        return self.state in (RunState.CANCELLED, RunState.FAILED) and Path(self.settings.checkpointPath).is_file()

    def resume(self) -> "TrainingRun":
        """Continue this run from its checkpoint, in a new process (same plots and curves)."""
        return self.logic.resumeTraining(self)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


__all__ = ["TrainingRun", "Curves", "EngineError", "RunState", "formatDuration"]
