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


def engineEnvironment():
    """Environment for the child: the engine folder first on PYTHONPATH, unbuffered output."""
    environment = os.environ.copy()
    paths = [engineRoot()] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    environment["PYTHONUNBUFFERED"] = "1"
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


def launchProcess(command, env=None, cwd=None, newProcessGroup=False):
    """Start ``command`` with text pipes. ``newProcessGroup``: own process group (session on
    POSIX) so that a signal reaches the whole tree, e.g. torchrun's workers."""
    kwargs = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                  env=env, cwd=cwd, text=True, encoding="utf-8", errors="replace", bufsize=1)
    if newProcessGroup:
        if os.name == "posix":
            kwargs["start_new_session"] = True
        else:
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
    else:
        kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
    return subprocess.Popen(command, **kwargs)


class EngineProcess:
    """One engine run: subprocess + reader threads; events are consumed with ``poll()``.

    ``arguments`` follow ``-m pairseg``; ``command`` replaces the whole command line instead
    (e.g. torchrun). ``launcher(command, env=, cwd=)`` starts the process (default:
    ``launchProcess``, in its own process group when ``newProcessGroup``). Front ends that
    want the raw output in order use ``pollLines()`` and ``exited`` instead of ``poll()``."""

    def __init__(self, arguments=(), environment=None, workingDirectory=None, command=None,
                 launcher=None, newProcessGroup=False):
        self.command = [str(c) for c in command] if command is not None else engineCommand(*arguments)
        self.environment = environment or engineEnvironment()
        self.workingDirectory = workingDirectory
        self.launcher = launcher
        self.newProcessGroup = newProcessGroup
        self.process = None
        self.returncode = None
        self.cancelled = False
        self._lines = queue.Queue()   # (source, line) from the reader threads
        self._events = queue.Queue()
        self._stderr = []
        self._otherOutput = []
        self._threads = []
        self.lastError = None

    def start(self):
        if self.launcher is not None:
            self.process = self.launcher(self.command, env=self.environment, cwd=self.workingDirectory)
        else:
            self.process = launchProcess(self.command, env=self.environment, cwd=self.workingDirectory,
                                         newProcessGroup=self.newProcessGroup)
        self._threads = []
        for stream, source in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr")):
            if stream is None:
                continue
            thread = threading.Thread(target=self._read, args=(stream, source), daemon=True,
                                      name=f"pairseg-{source}")
            thread.start()
            self._threads.append(thread)
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

    def pollLines(self):
        """Raw ``(source, line)`` pairs (source ``"stdout"`` or ``"stderr"``) read since the last
        call, in order (main thread). Use either this or ``poll()``, not both."""
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    @property
    def exited(self):
        """True once the process has exited and every line it printed was taken (no blocking)."""
        return (self.process is not None
                and all(not thread.is_alive() for thread in self._threads)
                and self._lines.empty() and self.process.poll() is not None)

    def _sortLines(self):
        for source, line in self.pollLines():
            if source == "stderr":
                self._stderr.append(line)
                if len(self._stderr) > 2000:
                    del self._stderr[:1000]
                continue
            line = line.strip()
            if not line:
                continue
            event = parseEvent(line)
            if event is not None:
                self._events.put(event)
            else:
                self._otherOutput.append(line)

    def poll(self):
        """Events received since the last call (main thread)."""
        self._sortLines()
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
        self._sortLines()
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

    def sendSignal(self, sig):
        """Send ``sig`` to the process (to its whole group when it has its own); ``None``: kill."""
        try:
            if sig is None:
                self.process.kill()
            elif os.name == "posix" and self.newProcessGroup:
                os.killpg(os.getpgid(self.process.pid), sig)
            else:
                self.process.send_signal(sig)
        except (ProcessLookupError, OSError):
            try:
                self.process.terminate()
            except OSError:
                pass

    @property
    def stderrText(self):
        self._sortLines()
        return "\n".join(self._stderr)

    @property
    def errorMessage(self):
        """The engine's own error message, else the last lines of its stderr."""
        if self.lastError and self.lastError.get("message"):
            return str(self.lastError["message"])
        self._sortLines()
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
