"""Engine processes run in the background, with their JSON events turned into state and curves.

``EngineJob`` starts one command (``python -m pairseg ... --events json``) with the PairSeg
module's ``PairSegLib.engine.EngineProcess`` (which reads stdout and stderr on two daemon threads
into a queue), and ``poll()`` (called by a Qt timer in the Widget,
or by ``wait()`` in scripts and tests) applies the queued lines on the calling thread: MRML and Qt
are only touched there, never from the reader threads.

States: initializing -> running -> (stopping) -> finished | stopped | failed.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

INITIALIZING = "initializing"
RUNNING = "running"
STOPPING = "stopping"
FINISHED = "finished"
STOPPED = "stopped"
FAILED = "failed"
FINAL_STATES = (FINISHED, STOPPED, FAILED)


class JobError(RuntimeError):
    """An engine run failed; the message is the engine's own error when it sent one."""


def pairSegLib(name: str):
    """A module of the PairSeg module's ``PairSegLib`` (``engine``, ``models``). In the extension
    both modules' folders are on sys.path; in a source checkout the sibling ``PairSeg`` folder is
    added."""
    import importlib

    try:
        return importlib.import_module(f"PairSegLib.{name}")
    except ImportError:
        sibling = Path(__file__).resolve().parents[2] / "PairSeg"
        if sibling.is_dir() and str(sibling) not in sys.path:
            sys.path.append(str(sibling))
        return importlib.import_module(f"PairSegLib.{name}")


def defaultLauncher(command, env=None, cwd=None):
    """Start ``command`` with pipes; own process group on POSIX so a stop reaches torchrun's
    workers too. Tests or other front ends can pass another launcher with the same signature."""
    return pairSegLib("engine").launchProcess(command, env=env, cwd=cwd, newProcessGroup=True)


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


class EngineJob:
    """One background engine process (training, segmentation, ...) and what it reported."""

    def __init__(self, command, env=None, cwd=None, launcher: Optional[Callable] = None,
                 name: str = "engine", logLimit: int = 5000, stopFile: Optional[str] = None):
        self.command = [str(c) for c in command]
        self.env = env
        self.cwd = cwd
        self.launcher = launcher or defaultLauncher
        self.name = name
        self.logLimit = logLimit
        self.stopFile = stopFile   # the engine stops cleanly when this file appears (all platforms)
        self.state = INITIALIZING
        self.runner = None   # the PairSegLib.engine.EngineProcess, once started
        self.returnCode = None
        self.events = []
        self.log = []
        self.curves = Curves()
        self.fraction = 0.0
        self.etaSeconds = None
        self.step = None
        self.total = None
        self.epoch = None
        self.loss = None
        self.stage = ""
        self.checkpoint = None
        self.outputs = []
        self.doneEvent = None
        self.errorMessage = ""
        self.errorKind = ""
        self.startTime = None
        self.endTime = None
        self.stopRequested = False
        # Callbacks, called on the thread that calls poll() (the GUI thread in Slicer).
        self.onEvent = None      # f(job, event dict)
        self.onLog = None        # f(job, line)
        self.onFinished = None   # f(job)
        self._finishedNotified = False

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> "EngineJob":
        if self.process is not None:
            raise JobError(f"{self.name}: already started")
        self.startTime = time.time()
        self._appendLog("$ " + " ".join(self.command))
        runner = pairSegLib("engine").EngineProcess(command=self.command, environment=self.env or os.environ,
                                                    workingDirectory=self.cwd, launcher=self.launcher,
                                                    newProcessGroup=True)
        runner.environment = self.env   # as given (None: inherit this process's environment)
        try:
            self.runner = runner.start()
        except OSError as error:
            self.state = FAILED
            self.errorMessage = f"could not start {self.command[0]}: {error}"
            self.endTime = time.time()
            self._notifyFinished()
            raise JobError(self.errorMessage) from error
        self.state = RUNNING
        return self

    @property
    def process(self):
        """The subprocess (``Popen`` or what the launcher returned), None before ``start()``."""
        return self.runner.process if self.runner is not None else None

    @property
    def running(self) -> bool:
        return self.state not in FINAL_STATES

    @property
    def elapsedSeconds(self) -> float:
        if self.startTime is None:
            return 0.0
        return (self.endTime or time.time()) - self.startTime

    def stop(self, timeout: float = 0.0) -> None:
        """Ask the engine to stop: SIGTERM (the engine finishes the step and leaves its last
        checkpoint, so the run can be resumed). With ``timeout`` > 0, wait that long, then kill."""
        if self.process is None or not self.running:
            return
        self.stopRequested = True
        self.state = STOPPING
        self._appendLog("Stop requested.")
        if self.stopFile:
            try:
                with open(self.stopFile, "w") as handle:
                    handle.write("stop\n")
            except OSError:
                pass
        if os.name == "posix":
            self._signal(signal.SIGTERM)
        if timeout > 0:
            try:
                self.wait(timeout=timeout, raiseOnError=False)
            except TimeoutError:
                self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self._signal(signal.SIGKILL if os.name == "posix" else None)

    def _signal(self, sig) -> None:
        self.runner.sendSignal(sig)

    # -- event handling (caller's thread) ----------------------------------------------------

    def poll(self) -> bool:
        """Apply what the process printed since the last call. Returns True while running."""
        if self.process is None:
            return self.running
        for source, line in self.runner.pollLines():
            self._handleLine(source, line)
        if self.runner.exited and self.running:
            self._finish(self.process.returncode)
        return self.running

    def wait(self, timeout: Optional[float] = None, interval: float = 0.1,
             raiseOnError: bool = True) -> "EngineJob":
        """Block until the process ends (for scripts and tests). Raises TimeoutError, and
        JobError when the run failed (not when it was stopped on request)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still running after {timeout} s")
            time.sleep(interval)
        if raiseOnError and self.state == FAILED:
            raise JobError(self.errorMessage or f"{self.name} failed")
        return self

    def _handleLine(self, source, line) -> None:
        text = line.strip()
        if source == "stdout":
            event = pairSegLib("engine").parseEvent(text)
            if event is not None:
                self._handleEvent(event)
                return
        if text:
            self._appendLog(text)

    def _handleEvent(self, event: dict) -> None:
        self.events.append(event)
        kind = event.get("event")
        if kind == "progress":
            self.stage = event.get("stage", self.stage) or self.stage
            if event.get("fraction") is not None:
                self.fraction = max(0.0, min(1.0, float(event["fraction"])))
            self.etaSeconds = event.get("eta_s", self.etaSeconds)
            self.step = event.get("step", self.step)
            self.total = event.get("total", self.total)
            self.epoch = event.get("epoch", self.epoch)
            if event.get("loss") is not None:
                self.loss = float(event["loss"])
                self.curves.addLoss(self.step if self.step is not None else len(self.curves.lossSteps),
                                    self.loss)
        elif kind == "validation":
            self.curves.addValidation(event.get("epoch", len(self.curves.valEpochs)),
                                      event.get("dice") or {}, event.get("mean_dice"))
            self._appendLog(f"Validation epoch {event.get('epoch')}: mean Dice "
                            f"{_fmt(event.get('mean_dice'))} "
                            + ", ".join(f"{k} {_fmt(v)}" for k, v in (event.get("dice") or {}).items()))
        elif kind == "checkpoint":
            self.checkpoint = event.get("path")
            self._appendLog(f"Checkpoint saved: {self.checkpoint}")
        elif kind == "done":
            self.doneEvent = event
            self.outputs = list(event.get("outputs") or [])
            self.fraction = 1.0
            self._appendLog("Done: " + ", ".join(str(o) for o in self.outputs))
        elif kind == "error":
            self.errorMessage = str(event.get("message", "")) or self.errorMessage
            self.errorKind = str(event.get("kind", ""))
            self._appendLog("Error: " + self.errorMessage)
        elif kind == "message":
            self._appendLog(str(event.get("text", "")))
        elif kind == "stopped":
            self.checkpoint = event.get("checkpoint", self.checkpoint)
            self._appendLog(f"Stopped at step {event.get('step')} of {event.get('total')}.")
        elif kind == "start":
            self._appendLog("Started: " + ", ".join(f"{k}={v}" for k, v in event.items()
                                                     if k not in ("event", "time")
                                                     and not isinstance(v, (dict, list))))
        if self.onEvent:
            self.onEvent(self, event)

    def _finish(self, returnCode) -> None:
        self.returnCode = returnCode
        self.endTime = time.time()
        if returnCode == 0 and self.doneEvent is not None:
            self.state = FINISHED
        elif self.stopRequested:
            self.state = STOPPED
            self._appendLog("Stopped" + (f"; resumable checkpoint {self.checkpoint}" if self.checkpoint else "") + ".")
        else:
            self.state = FAILED
            if not self.errorMessage:
                tail = [line for line in self.log[-8:] if not line.startswith("$ ")]
                self.errorMessage = (f"{self.name} exited with code {returnCode}"
                                     + (": " + " | ".join(tail[-3:]) if tail else ""))
        self._notifyFinished()

    def _notifyFinished(self) -> None:
        if self._finishedNotified:
            return
        self._finishedNotified = True
        if self.onFinished:
            self.onFinished(self)

    def _appendLog(self, line: str) -> None:
        self.log.append(line)
        if len(self.log) > self.logLimit:
            del self.log[: len(self.log) - self.logLimit]
        if self.onLog:
            self.onLog(self, line)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def formatDuration(seconds) -> str:
    """``75`` -> ``1m15s`` (for the progress bar's ETA)."""
    if seconds is None:
        return "?"
    try:
        seconds = int(round(float(seconds)))
    except (TypeError, ValueError):
        return "?"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


__all__ = ["EngineJob", "JobError", "Curves", "defaultLauncher", "formatDuration", "pairSegLib",
           "INITIALIZING", "RUNNING", "STOPPING", "FINISHED", "STOPPED", "FAILED", "FINAL_STATES"]
