"""Running the PairSeg engine in a background process, driven by its JSON events.

The engine (the ``pairseg`` package) ships next to the scripted modules; it is started as
``<python> -m pairseg <command> ... --events json`` so that torch work never blocks Slicer's UI
thread and a crash or out-of-memory error cannot take Slicer down. A reader thread turns each
stdout line into an event dict and queues it; ``poll()`` (called from the main thread, by a Qt
timer in the widget or a loop in blocking code) hands the queued events over.

``EngineProcess`` is the default *process factory* of the logic; tests or other front ends may
inject any callable with the same signature returning an object with ``start``, ``poll``,
``finished``, ``cancel``, ``returncode``, ``stderrText`` and ``errorMessage``.
"""

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time


class EngineNotFoundError(RuntimeError):
    pass


def engineRoot():
    """The folder that contains the ``pairseg`` package (installed beside the modules, or the repository)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the module folder
    for candidate in (here, os.path.dirname(here)):
        if os.path.isfile(os.path.join(candidate, "pairseg", "__init__.py")):
            return candidate
    raise EngineNotFoundError(f"The PairSeg engine (pairseg package) was not found next to {here}.")


def pythonExecutable():
    """PythonSlicer inside Slicer (same packages as Slicer's Python), else this interpreter."""
    executable = shutil.which("PythonSlicer")
    if executable:
        return executable
    return sys.executable


def engineEnvironment():
    """Environment for the child: the engine folder first on PYTHONPATH, unbuffered output."""
    environment = os.environ.copy()
    paths = [engineRoot()] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    environment["PYTHONUNBUFFERED"] = "1"
    environment.setdefault("PYTHONIOENCODING", "utf-8")
    return environment


def engineCommand(*arguments):
    return [pythonExecutable(), "-m", "pairseg", *[str(a) for a in arguments]]


class EngineProcess:
    """One engine run: subprocess + reader threads; events are consumed with ``poll()``."""

    def __init__(self, arguments, environment=None, workingDirectory=None):
        self.command = engineCommand(*arguments)
        self.environment = environment or engineEnvironment()
        self.workingDirectory = workingDirectory
        self.process = None
        self.returncode = None
        self.cancelled = False
        self._events = queue.Queue()
        self._stderr = []
        self._otherOutput = []
        self._threads = []
        self.lastError = None

    def start(self):
        creationFlags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=self.environment, cwd=self.workingDirectory, text=True, encoding="utf-8",
            errors="replace", bufsize=1, creationflags=creationFlags)
        self._threads = [threading.Thread(target=self._readStdout, daemon=True),
                         threading.Thread(target=self._readStderr, daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def _readStdout(self):
        for line in self.process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict) and "event" in event:
                self._events.put(event)
            else:
                self._otherOutput.append(line)
        self.process.stdout.close()

    def _readStderr(self):
        for line in self.process.stderr:
            self._stderr.append(line.rstrip("\n"))
            if len(self._stderr) > 2000:
                del self._stderr[:1000]
        self.process.stderr.close()

    def poll(self):
        """Events received since the last call (main thread)."""
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            if event.get("event") == "error":
                self.lastError = event
            events.append(event)
        return events

    @property
    def finished(self):
        """True once the process has exited and all its output has been read."""
        if self.process is None:
            return False
        if self.returncode is None:
            code = self.process.poll()
            if code is None:
                return False
            for thread in self._threads:
                thread.join(timeout=5)
            self.returncode = code
        return self._events.empty()

    def cancel(self, gracePeriod=5.0):
        """Stop the process (terminate, then kill after ``gracePeriod`` seconds)."""
        self.cancelled = True
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(gracePeriod)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @property
    def stderrText(self):
        return "\n".join(self._stderr)

    @property
    def errorMessage(self):
        """The engine's own error message, else the last lines of its stderr."""
        if self.lastError and self.lastError.get("message"):
            return str(self.lastError["message"])
        tail = [line for line in self._stderr if line.strip()][-8:]
        if tail:
            return "\n".join(tail)
        return f"The engine process ended with exit code {self.returncode}."

    def wait(self, pollInterval=0.05, onEvents=None, timeout=None):
        """Block until the process ends (for console use); ``onEvents(list)`` gets each batch."""
        started = time.monotonic()
        while True:
            events = self.poll()
            if events and onEvents:
                onEvents(events)
            if self.finished:
                events = self.poll()
                if events and onEvents:
                    onEvents(events)
                return self.returncode
            if timeout is not None and time.monotonic() - started > timeout:
                self.cancel()
                raise TimeoutError(f"engine process did not finish in {timeout} s")
            time.sleep(pollInterval)
