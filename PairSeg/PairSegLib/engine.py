"""The one Slicer-side bridge to the PairSeg engine: a background process driven by its JSON events.

Both modules (PairSeg, PairSegTrainer) run every piece of engine work (segment, evaluate,
proxy-maps, train) as ``<python> -m pairseg <command> ... --events json`` in a child process, so
that torch never runs in Slicer's process, a crash or out-of-memory error cannot take Slicer down,
and the GUI thread is never blocked. ``EngineRun`` is that run:

- one state vocabulary, ``RunState``: starting -> running -> done | failed | cancelled;
- two reader threads put the child's stdout/stderr lines into a queue; ``poll()`` (called from the
  GUI thread by a Qt timer, or by ``wait()`` in scripts) applies them: progress, ETA, log, errors;
  MRML and Qt are only touched there;
- hooks for what differs between runs, overridden by subclasses: ``handleEvent(event)`` (e.g.
  training curves), ``completed()`` (e.g. importing a segmentation, registering a model; an
  exception there turns the run into a failure) and ``finished()`` (always, e.g. temp folders);
- the child always starts in its own process group / session. In an installed Slicer
  ``PythonSlicer`` is a launcher that runs ``python-real`` as ITS child and forwards no signal:
  Cancel, Stop and clean-up therefore signal the whole group (POSIX) or kill the whole process
  tree (Windows: psutil when available, else ``taskkill /T /F``). No call made on the GUI thread
  waits for the child or joins a reader thread for more than ``GUI_WAIT_SECONDS``;
- on Windows no console window opens (``CREATE_NO_WINDOW``).

The injection point is the *launcher* (``EngineLauncher``, a ``typing.Protocol``): a callable
``launcher(command, env=..., cwd=...)`` returning a started ``subprocess.Popen``-like object. The
default is ``launchProcess``; tests and other front ends pass their own (which must keep the
child in its own process group, e.g. by calling ``launchProcess``).

Before anything starts, ``EngineRun.start()`` goes through ``install.ensureEngineReady`` (the one
"can the engine run here?" step of both modules, with one confirmation), unless the run was made
with ``ensureEngine=False`` (runs that need no torch).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

try:  # typing.Protocol is in the standard library from Python 3.8 (Slicer 5.6 has 3.9)
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object

#: the longest a GUI-thread call (cancel, stop, shutdown, poll) waits for the child, in seconds
GUI_WAIT_SECONDS = 0.05
#: after a cancel request, how long the process group gets to exit on SIGTERM before SIGKILL
CANCEL_GRACE_SECONDS = 5.0
#: after the child exited, how long its reader threads may still be fed by a left-over descendant
ORPHAN_OUTPUT_SECONDS = 2.0
# Windows process-creation flags (the subprocess constants exist only on Windows)
CREATE_NEW_PROCESS_GROUP = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200)
CREATE_NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000)


class EngineNotFoundError(RuntimeError):
    pass


class EngineError(RuntimeError):
    """An engine run failed (not the user's input); the message is the engine's own when it sent one."""


class RunState:
    """The states of an ``EngineRun`` (the only vocabulary both modules use)."""

    STARTING = "starting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FINAL = (DONE, FAILED, CANCELLED)


class EngineLauncher(Protocol):
    """Starts an engine command; returns the started process (``subprocess.Popen`` or alike, with
    ``pid``, ``stdout``/``stderr`` text streams, ``poll()``, ``wait(timeout)``, ``kill()``).

    The process must run in its own process group / session (``launchProcess`` does it), so that
    a signal to the group reaches every descendant and nothing else."""

    def __call__(self, command: Sequence[str], env: Optional[Mapping[str, str]] = None,
                 cwd: Optional[str] = None) -> Any:
        ...


def engineRoot():
    """The folder that contains the ``pairseg`` package (installed beside the modules, or the repository)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the module folder
    # installed extension: beside the module folders; source checkout: <repository>/src
    for candidate in (here, os.path.dirname(here), os.path.join(os.path.dirname(here), "src")):
        if os.path.isfile(os.path.join(candidate, "pairseg", "__init__.py")):
            return candidate
    raise EngineNotFoundError(f"The PairSeg engine (pairseg package) was not found next to {here}.")


def pythonExecutable():
    """The interpreter for engine processes: PythonSlicer inside the Slicer application (same
    packages as Slicer's Python), else this interpreter."""
    try:
        import slicer  # noqa: F401 - only to know whether we run inside the Slicer application

        if hasattr(slicer, "app"):
            found = shutil.which("PythonSlicer")
            if found:
                return found
    except ImportError:
        pass
    return sys.executable


def torchFreeEngineModule(name):
    """A torch-free module of the engine (``pairseg.modelfiles.catalog``, ``pairseg.constants``) imported in
    Slicer's process. The extension installs the ``pairseg`` package beside the modules, which
    Slicer has on sys.path; a source checkout added through "Additional module paths" has it in
    ``src/``, which is then appended to sys.path (``engineRoot()``)."""
    import importlib

    try:
        return importlib.import_module(f"pairseg.{name}")
    except ImportError:
        root = engineRoot()
        if root in sys.path:
            raise
        sys.path.append(root)
        return importlib.import_module(f"pairseg.{name}")


def resolveModel(spec):
    """A model argument as a file path: an existing file as it is, else the file of the catalog
    model of that name (``pairseg.modelfiles.catalog.resolve_model``: size and sha256 checked). ValueError
    (the engine's PairSegInputError) naming the spec and the catalog's models otherwise."""
    if spec is None or not str(spec).strip():
        raise ValueError("No model selected.")
    if os.path.isfile(os.fspath(spec)):
        return os.path.abspath(os.fspath(spec))
    return str(torchFreeEngineModule("modelfiles.catalog").resolve_model(str(spec)))


def engineEnvironment():
    """Environment for the child: the engine folder first on PYTHONPATH, unbuffered UTF-8 output,
    and Python's UTF-8 mode forced (``PYTHONUTF8=1``): Slicer's PythonSlicer is plain CPython, which
    on Windows otherwise decodes command-line paths, files and pipes in the ANSI code page (a user
    profile "José", a folder "Données"). The paths the engine gives ITK go through
    ``pairseg.paths.itk_path`` (ITK opens files through the narrow API on Windows)."""
    environment = os.environ.copy()
    paths = [engineRoot()] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    environment["PYTHONUNBUFFERED"] = "1"
    environment["PYTHONUTF8"] = "1"
    environment.setdefault("PYTHONIOENCODING", "utf-8")
    return environment


def engineCommand(*arguments, python=None):
    """``[<python>, "-m", "pairseg", *arguments]`` (``python``: default ``pythonExecutable()``)."""
    return [python or pythonExecutable(), "-m", "pairseg", *[str(a) for a in arguments]]


def parseEvent(line):
    """The event dict of one stdout line (a JSON object with an ``event`` key), else None."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def popenKeywords(osName=None):
    """The ``subprocess.Popen`` keywords of every engine process on ``osName`` (default this
    system's ``os.name``): text pipes, and its own session (POSIX) or process group without a
    console window (Windows)."""
    osName = osName or os.name
    keywords = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                    text=True, encoding="utf-8", errors="replace", bufsize=1)
    if osName == "nt":
        keywords["creationflags"] = CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW
    else:
        keywords["start_new_session"] = True
    return keywords


def launchProcess(command, env=None, cwd=None):
    """The default ``EngineLauncher``: ``subprocess.Popen`` with ``popenKeywords()``."""
    return subprocess.Popen([str(c) for c in command], env=env, cwd=cwd, **popenKeywords())


def treeKillCommand(pid):
    """The Windows command that kills process ``pid`` and all its descendants."""
    return ["taskkill", "/PID", str(int(pid)), "/T", "/F"]


def processGroup(process):
    """The POSIX process group ``process`` leads (its own session), or None when it shares ours
    (a launcher that made no new session) or is already gone. Read it right after the start:
    the group outlives its leader (a launcher that exits while the engine runs on)."""
    if os.name == "nt" or process is None:
        return None
    try:
        group = os.getpgid(process.pid)
    except (ProcessLookupError, PermissionError, OSError):
        return None
    return group if group != os.getpgid(0) else None


def signalProcessTree(process, sig=None, osName=None, group=None):
    """Send ``sig`` (None: kill) to ``process`` and all its descendants, without waiting.

    POSIX: to ``group`` (default: the group ``process`` leads now), never to our own group: a
    process sharing our group gets the signal alone. Windows: psutil when installed, else
    ``taskkill /T /F`` started in the background (Windows has no signal for a tree; any ``sig``
    kills)."""
    if process is None:
        return
    osName = osName or os.name
    pid = process.pid
    if osName != "nt":
        sig = signal.SIGKILL if sig is None else sig
        group = group or processGroup(process)
        try:
            if group is not None:
                os.killpg(group, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError, OSError):
            pass
        return
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            parent = psutil.Process(pid)
            for child in parent.children(recursive=True) + [parent]:
                try:
                    child.kill()
                except psutil.Error:
                    pass
            return
        except psutil.Error:
            return
    try:
        subprocess.Popen(treeKillCommand(pid), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL, creationflags=CREATE_NO_WINDOW)
    except OSError:
        try:
            process.kill()
        except OSError:
            pass


def _ensureEngineReady():
    from . import install

    install.ensureEngineReady(askConfirmation=True)


class EngineRun:
    """One background engine process and what it reported (see the module docstring).

    ``arguments`` follow ``-m pairseg``; ``command`` replaces the whole command line instead (a
    fake engine, torchrun). Attributes, updated by ``poll()``: ``state`` (RunState), ``fraction``
    (0..1), ``message`` (one line for a status label), ``stage``, ``step``, ``total``, ``epoch``,
    ``loss``, ``etaSeconds``, ``events`` (every event dict), ``log`` (non-event output lines,
    stderr included, at most ``logLimit``), ``outputs`` and ``doneEvent`` (from the ``done``
    event), ``errorMessage``/``errorKind`` and ``error`` (an exception when failed or cancelled),
    ``returnCode``. Callbacks, called on the thread that calls ``poll()``: ``onEvent(run, event)``,
    ``onLog(run, line)``, ``onProgress(run)``, ``onFinished(run)``.
    """

    name = "engine"

    def __init__(self, arguments=(), command=None, launcher: Optional[EngineLauncher] = None,
                 environment: Optional[Mapping[str, str]] = None, workingDirectory: Optional[str] = None,
                 python: Optional[str] = None, name: Optional[str] = None, stopFile: Optional[str] = None,
                 ensureEngine: bool = True, logLimit: int = 5000):
        self.python = python
        self.command = [str(c) for c in command] if command is not None else engineCommand(*arguments, python=python)
        self.launcher = launcher or launchProcess
        self.environment = environment
        self.workingDirectory = workingDirectory
        if name:
            self.name = name
        self.stopFile = stopFile     # the engine stops cleanly when this file appears (all platforms)
        self.ensureEngine = ensureEngine
        self.logLimit = logLimit
        self.process = None
        self.state = RunState.STARTING
        self.fraction = 0.0
        self.message = "Starting"
        self.stage = ""
        self.step = self.total = self.epoch = self.loss = self.etaSeconds = None
        self.events: List[Dict] = []
        self.log: List[str] = []
        self.outputs: List[str] = []
        self.doneEvent = None
        self.errorMessage = ""
        self.errorKind = ""
        self.error: Optional[BaseException] = None
        self.returnCode = None
        self.startTime = None
        self.endTime = None
        self.cancelRequested = False
        self.stopRequested = False
        self.onEvent: Optional[Callable] = None
        self.onLog: Optional[Callable] = None
        self.onProgress: Optional[Callable] = None
        self.onFinished: Optional[Callable] = None
        self._lines: "queue.Queue" = queue.Queue()
        self._threads: List[threading.Thread] = []
        self._killAt = None        # monotonic time at which a cancelled group gets SIGKILL
        self._exitSeen = None      # monotonic time the child was first seen exited
        self._group = None         # the child's own process group (POSIX), read at the start

    # -- life cycle -----------------------------------------------------------------------------

    def start(self):
        """Ensure the engine can run (``install.ensureEngineReady``; DependencyError propagates,
        nothing started), then start the child. A launch error makes the run fail at once."""
        if self.process is not None or self.done:
            raise EngineError(f"{self.name}: already started")
        if self.ensureEngine:
            _ensureEngineReady()
        self.startTime = time.time()
        try:
            self.prepare()
            self._appendLog("$ " + " ".join(self.command))
            environment = dict(self.environment) if self.environment is not None else engineEnvironment()
            self.process = self.launcher(self.command, env=environment, cwd=self.workingDirectory)
        except Exception as error:
            self._finish(RunState.FAILED, EngineError(f"{self.name} could not start: {error}"))
            return self
        self._group = processGroup(self.process)
        for stream, source in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr")):
            if stream is None:
                continue
            thread = threading.Thread(target=self._read, args=(stream, source), daemon=True,
                                      name=f"pairseg-{self.name}-{source}")
            thread.start()
            self._threads.append(thread)
        self._setProgress(RunState.RUNNING, self.fraction, f"{self.name.capitalize()}: engine starting")
        return self

    def _read(self, stream, source):
        try:
            for line in iter(stream.readline, ""):
                self._lines.put((source, line.rstrip("\r\n")))
        except (OSError, ValueError):
            pass
        finally:
            try:
                stream.close()
            except (OSError, ValueError):
                pass

    @property
    def done(self) -> bool:
        return self.state in RunState.FINAL

    @property
    def running(self) -> bool:
        return not self.done

    @property
    def elapsedSeconds(self) -> float:
        if self.startTime is None:
            return 0.0
        return (self.endTime or time.time()) - self.startTime

    def cancel(self):
        """Stop the run now (SIGTERM to the whole process group, SIGKILL after
        ``CANCEL_GRACE_SECONDS`` if still there; Windows: kill the tree). Never blocks; the run
        ends as ``cancelled`` at a later ``poll()``, once the child is gone."""
        if self.done:
            return
        self.cancelRequested = True
        if self.process is None:
            self._finish(RunState.CANCELLED, EngineError(f"{self.name} cancelled"))
            return
        self.message = "Cancelling"
        signalProcessTree(self.process, signal.SIGTERM if os.name != "nt" else None, group=self._group)
        self._killAt = time.monotonic() + CANCEL_GRACE_SECONDS

    def stop(self, killAfter: Optional[float] = None):
        """Ask the engine to stop cleanly (a training run saves its checkpoint and can be resumed):
        the stop file is written and, on POSIX, the process group gets SIGTERM. With ``killAfter``
        seconds the group is killed if still there then. Never blocks; the run ends ``cancelled``."""
        if self.done:
            return
        self.stopRequested = True
        self.cancelRequested = True
        if self.process is None:
            self._finish(RunState.CANCELLED, EngineError(f"{self.name} stopped"))
            return
        self.message = "Stopping"
        self._appendLog("Stop requested.")
        if self.stopFile:
            try:
                with open(self.stopFile, "w") as handle:
                    handle.write("stop\n")
            except OSError:
                pass
        if os.name != "nt":
            signalProcessTree(self.process, signal.SIGTERM, group=self._group)
        if killAfter is not None:
            self._killAt = time.monotonic() + killAfter

    def kill(self):
        """Kill the whole process tree now (no waiting)."""
        if self.process is not None:
            signalProcessTree(self.process, None, group=self._group)

    def shutdown(self):
        """For module clean-up and scene close: kill the tree, reap the child within
        ``GUI_WAIT_SECONDS``, end the run as cancelled. Returns within about 0.1 s."""
        if self.done:
            return
        self.cancelRequested = True
        if self.process is not None:
            signalProcessTree(self.process, None, group=self._group)
            try:
                self.process.wait(GUI_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        self._drain()
        self._finish(RunState.CANCELLED, EngineError(f"{self.name} cancelled"))

    # -- following the run (caller's thread) --------------------------------------------------------

    def poll(self) -> bool:
        """Apply what the child printed since the last call; end the run once the child is gone
        and its output read. Returns True while the run is not over. Never blocks."""
        if self.done:
            return False
        if self.process is None:
            return True
        self._drain()
        now = time.monotonic()
        if self._killAt is not None and now >= self._killAt:
            signalProcessTree(self.process, None, group=self._group)
            self._killAt = None
        code = self.process.poll()
        if code is None:
            return True
        if self._exitSeen is None:
            self._exitSeen = now
        if any(thread.is_alive() for thread in self._threads):
            # The child (e.g. the PythonSlicer launcher) is gone but a descendant still holds the
            # pipes: a stopping engine may finish (its checkpoint) until a kill deadline, an orphan
            # gets ORPHAN_OUTPUT_SECONDS, a cancelled one nothing; then the group is killed.
            if self.stopRequested:   # the engine saves its checkpoint; a kill deadline ends it
                return True
            if not self.cancelRequested and now - self._exitSeen < ORPHAN_OUTPUT_SECONDS:
                return True
            signalProcessTree(self.process, None, group=self._group)
        self._drain()
        self.returnCode = code
        self._concludeExit(code)
        return False

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05, raiseOnError: bool = True):
        """Block until the run is over (scripts, tests, the Python console; not for the GUI).
        Raises TimeoutError (after killing the run) and, with ``raiseOnError``, ``self.error``
        when the run failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.shutdown()
                raise TimeoutError(f"{self.name} still running after {timeout} s")
            time.sleep(interval)
        if raiseOnError and self.state == RunState.FAILED:
            raise self.error
        return self

    def _drain(self):
        while True:
            try:
                source, line = self._lines.get_nowait()
            except queue.Empty:
                return
            event = parseEvent(line) if source == "stdout" else None
            if event is not None:
                self._handleEngineEvent(event)
            elif line.strip():
                self._appendLog(line.strip())

    def _handleEngineEvent(self, event):
        self.events.append(event)
        kind = event.get("event")
        if kind == "progress":
            self.stage = event.get("stage") or self.stage
            if isinstance(event.get("fraction"), (int, float)):
                self.fraction = min(max(float(event["fraction"]), 0.0), 1.0)
            for key, attribute in (("step", "step"), ("total", "total"), ("epoch", "epoch"), ("eta_s", "etaSeconds")):
                if event.get(key) is not None:
                    setattr(self, attribute, event[key])
            if event.get("loss") is not None:
                self.loss = float(event["loss"])
            self._setProgress(RunState.RUNNING, self.fraction, self.progressText())
        elif kind == "start":
            device = event.get("device")
            self._appendLog("Started: " + ", ".join(f"{k}={v}" for k, v in event.items()
                                                     if k not in ("event", "time") and not isinstance(v, (dict, list))))
            self._setProgress(RunState.RUNNING, self.fraction,
                              f"{self.name.capitalize()}: engine started" + (f" on {device}" if device else ""))
        elif kind == "message" and event.get("text"):
            self._appendLog(str(event["text"]))
            self._setProgress(RunState.RUNNING, self.fraction, str(event["text"]))
        elif kind == "error":
            self.errorMessage = str(event.get("message") or self.errorMessage)
            self.errorKind = str(event.get("kind") or "")
            self._appendLog("Error: " + self.errorMessage)
        elif kind == "done":
            self.doneEvent = event
            self.outputs = [str(o) for o in (event.get("outputs") or [])]
        self.handleEvent(event)
        if self.onEvent:
            self.onEvent(self, event)

    def progressText(self) -> str:
        """One line for a status label from the last progress event."""
        text = (self.stage or self.name).capitalize()
        if self.step is not None and self.total:
            text += f" {self.step}/{self.total}"
        if isinstance(self.etaSeconds, (int, float)):
            text += f", about {formatDuration(self.etaSeconds)} left"
        return text

    def _concludeExit(self, code):
        if self.cancelRequested:
            what = "stopped" if self.stopRequested else "cancelled"
            self._finish(RunState.CANCELLED, EngineError(f"{self.name} {what}"))
            return
        if code != 0 or (self.doneEvent is None and self.expectsDoneEvent):
            self._finish(RunState.FAILED, self.failure(code))
            return
        self._setProgress(RunState.RUNNING, max(self.fraction, 0.97), self.completingText())
        try:
            message = self.completed()
        except Exception as error:
            self._finish(RunState.FAILED, error if isinstance(error, EngineError)
                         else EngineError(f"{self.name}: {error}"))
            return
        self._finish(RunState.DONE, None, message)

    #: a run whose command sends events must end with a ``done`` event to count as a success
    expectsDoneEvent = True

    def failure(self, code) -> BaseException:
        """The exception of a failed run: the engine's error message, else the tail of stderr.
        Exit code 2 means bad input (``inputErrorClass``)."""
        message = self.errorMessage
        if not message:
            tail = [line for line in self.log if line.strip() and not line.startswith("$ ")][-8:]
            message = "\n".join(tail) if tail else f"the engine process ended with exit code {code}"
        message = friendlyEngineError(message)
        self.errorMessage = message
        errorClass = self.inputErrorClass if code == 2 and self.inputErrorClass else EngineError
        return errorClass(message)

    #: the exception class for exit code 2 (bad input), None: EngineError
    inputErrorClass = None

    def _finish(self, state, error, message=None):
        if self.done:
            return
        self.error = error
        if error is not None and not self.errorMessage and state == RunState.FAILED:
            self.errorMessage = str(error)
        self.endTime = time.time()
        if message is None:
            message = {RunState.CANCELLED: "Stopped" if self.stopRequested else "Cancelled",
                       RunState.FAILED: f"Failed: {error}"}.get(state, "Done")
        self.state = state
        try:
            self.finished()
        except Exception as cleanupError:  # clean-up must not hide the run's outcome
            self._appendLog(f"Clean-up failed: {cleanupError}")
        self._setProgress(state, 1.0 if state == RunState.DONE else self.fraction, message)
        if self.onFinished:
            self.onFinished(self)

    def _setProgress(self, state, fraction, message):
        self.state, self.fraction, self.message = state, fraction, message
        if self.onProgress:
            self.onProgress(self)

    def _appendLog(self, line):
        self.log.append(line)
        if len(self.log) > self.logLimit:
            del self.log[: len(self.log) - self.logLimit]
        if self.onLog:
            self.onLog(self, line)

    # -- hooks for subclasses --------------------------------------------------------------------

    def prepare(self):
        """Before the child starts (e.g. write its input files, set ``self.command``); an
        exception fails the run."""

    def handleEvent(self, event):
        """Each engine event, after the common handling (e.g. training curves)."""

    def completingText(self) -> str:
        return "Importing the result"

    def completed(self) -> Optional[str]:
        """The child succeeded: bring its result into Slicer (GUI thread). Returns the final
        message (None: "Done"); an exception fails the run."""
        return None

    def finished(self):
        """Always called once, when the run ends in any state (e.g. remove temporary files)."""


def friendlyEngineError(message) -> str:
    """The engine's error message, with advice for the usual environment problems."""
    text = str(message)
    lowered = text.lower()
    if "out of memory" in lowered:
        return text + "\nTry the CPU device, close other GPU programs, or crop the volume."
    if "no module named 'torch'" in lowered or 'no module named "torch"' in lowered:
        return "PyTorch is not installed: install it with the PyTorch extension (PyTorch Utils module)."
    return text


def formatDuration(seconds) -> str:
    """``75`` -> ``1m15s`` (progress texts); ``None`` or junk -> ``?``: the engine's one duration
    format (``pairseg.events.format_duration``, standard library only)."""
    return torchFreeEngineModule("events").format_duration(seconds)
