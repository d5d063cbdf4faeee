"""The one engine bridge (PairSegLib.engine.EngineRun) with a launcher in the middle, as in an
installed Slicer where PythonSlicer runs python-real as ITS child and forwards no signal.

A fake ``PythonSlicer`` (an executable script that runs the real interpreter as a child and waits)
starts a stand-in engine that prints JSON events. After Cancel, Stop, module clean-up (shutdown)
and when the launcher exits leaving the engine behind, no process of the run is left, and no call
on the "GUI thread" (cancel / stop / shutdown / poll) takes more than 100 ms. Windows: the
Popen keywords (no console window, own process group) and the tree kill command, on a simulated
Windows platform.
"""

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUI_BUDGET_S = 0.1

FAKE_ENGINE = textwrap.dedent("""
    import json, os, signal, sys, time
    mode = sys.argv[1]
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    asked = []
    if mode == "graceful":  # as pairseg train does: the handler only notes the request (a print
        signal.signal(signal.SIGTERM, lambda *args: asked.append(1))  # there could re-enter stdout)
    print(json.dumps({"event": "start", "pid": os.getpid()}), flush=True)
    for step in range(1, 100000):
        if asked:
            print(json.dumps({"event": "stopped", "step": step, "total": 9, "checkpoint": "ckpt"}), flush=True)
            sys.exit(130)
        print(json.dumps({"event": "progress", "stage": "segmenting", "step": step, "total": 100000,
                          "fraction": step / 100000}), flush=True)
        time.sleep(0.02)
""")

FAKE_PYTHONSLICER = textwrap.dedent("""\
    #!{python}
    # Like Slicer's PythonSlicer launcher: runs the real interpreter as a child, forwards no signal.
    import subprocess, sys
    if sys.argv[1] == "--detach":   # a launcher that exits and leaves its child running
        subprocess.Popen([{python!r}] + sys.argv[2:])
        sys.exit(0)
    sys.exit(subprocess.call([{python!r}] + sys.argv[1:]))
""")


@pytest.fixture
def engine(load_module):
    load_module("PairSeg")
    from PairSegLib import engine

    return engine


@pytest.fixture
def pythonSlicer(tmp_path):
    path = tmp_path / "PythonSlicer"
    path.write_text(FAKE_PYTHONSLICER.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def processTable():
    """{pid: (parent pid, session id, state)} of every process (Linux /proc)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stream:
                fields = stream.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(name)] = (int(fields[1]), int(fields[3]), fields[0])
    return table


def alive(table, pid):
    return pid in table and table[pid][2] != "Z"


def descendants(table, root):
    children = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def leftOver(run, enginePid):
    """Live processes of the run: the launcher, the engine, anything in the run's session, and
    live descendants of this test process; waits up to 2 s for the kernel to deliver signals."""
    deadline = time.monotonic() + 2.0
    while True:
        table = processTable()
        session = run.process.pid
        left = {pid for pid, (_, sid, state) in table.items() if sid == session and state != "Z"}
        left |= {pid for pid in (run.process.pid, enginePid) if alive(table, pid)}
        left |= {pid for pid in descendants(table, os.getpid()) if alive(table, pid)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def timed(call, *args):
    started = time.perf_counter()
    result = call(*args)
    return result, time.perf_counter() - started


def startThroughLauncher(engine, pythonSlicer, mode, detach=False):
    command = [pythonSlicer] + (["--detach"] if detach else []) + ["-c", FAKE_ENGINE, mode]
    run = engine.EngineRun(command=command, name="segmentation", ensureEngine=False, environment=dict(os.environ))
    _, seconds = timed(run.start)
    assert run.state == "running", run.log
    enginePid = None
    deadline = time.monotonic() + 30
    while enginePid is None:
        _, seconds = timed(run.poll)
        assert seconds < GUI_BUDGET_S
        enginePid = next((e["pid"] for e in run.events if e["event"] == "start"), None)
        assert time.monotonic() < deadline, run.log
        time.sleep(0.01)
    table = processTable()
    if not detach:
        assert table[enginePid][0] == run.process.pid, "the engine runs as the launcher's child"
    assert table[enginePid][1] == run.process.pid, "the run has its own session"
    return run, enginePid


def pollUntilOver(run, timeout=15):
    longest = 0.0
    deadline = time.monotonic() + timeout
    while True:
        running, seconds = timed(run.poll)
        longest = max(longest, seconds)
        if not running:
            return longest
        assert time.monotonic() < deadline, f"still {run.state}: {run.log[-5:]}"
        time.sleep(0.01)


def test_cancel_stops_engine_behind_launcher(engine, pythonSlicer):
    run, enginePid = startThroughLauncher(engine, pythonSlicer, "plain")
    _, seconds = timed(run.cancel)
    assert seconds < GUI_BUDGET_S
    assert pollUntilOver(run) < GUI_BUDGET_S
    assert run.state == "cancelled" and run.message == "Cancelled"
    assert leftOver(run, enginePid) == set()


def test_stop_reaches_engine_which_stops_cleanly(engine, pythonSlicer):
    run, enginePid = startThroughLauncher(engine, pythonSlicer, "graceful")
    _, seconds = timed(run.stop)
    assert seconds < GUI_BUDGET_S
    assert pollUntilOver(run) < GUI_BUDGET_S
    assert run.state == "cancelled" and run.message == "Stopped"
    assert any(e["event"] == "stopped" for e in run.events), "the engine itself got the signal"
    assert leftOver(run, enginePid) == set()


def test_engine_ignoring_sigterm_is_killed_after_grace(engine, pythonSlicer, monkeypatch):
    monkeypatch.setattr(engine, "CANCEL_GRACE_SECONDS", 0.3)
    run, enginePid = startThroughLauncher(engine, pythonSlicer, "stubborn")
    run.cancel()
    assert pollUntilOver(run) < GUI_BUDGET_S
    assert run.state == "cancelled"
    assert leftOver(run, enginePid) == set()


def test_cleanup_shutdown_kills_the_tree_at_once(engine, pythonSlicer):
    run, enginePid = startThroughLauncher(engine, pythonSlicer, "stubborn")
    _, seconds = timed(run.shutdown)
    assert seconds < GUI_BUDGET_S
    assert run.state == "cancelled" and not run.poll()
    assert leftOver(run, enginePid) == set()


def test_launcher_exiting_early_never_blocks_and_leaves_nothing(engine, pythonSlicer, monkeypatch):
    """The launcher exits while its child still feeds the pipes: poll() never waits for the
    readers; after ORPHAN_OUTPUT_SECONDS the group is killed and the run fails clearly."""
    monkeypatch.setattr(engine, "ORPHAN_OUTPUT_SECONDS", 0.5)
    run, enginePid = startThroughLauncher(engine, pythonSlicer, "plain", detach=True)
    assert pollUntilOver(run) < GUI_BUDGET_S
    assert run.state == "failed" and run.returnCode == 0
    assert leftOver(run, enginePid) == set()


def test_module_cleanup_shuts_down_a_running_segmentation(load_module, engine, pythonSlicer, harness, mrml_scene,
                                                          tmp_path, monkeypatch):
    """PairSeg's widget clean-up path (``task.shutdown()``) on a SegmentationRun started by the
    logic through the fake PythonSlicer: the engine tree is gone, the work folder removed, the
    scene unchanged."""
    import numpy as np
    import slicer

    pairseg = load_module("PairSeg")
    logic = pairseg.PairSegLogic()
    logic.python = pythonSlicer
    monkeypatch.setattr(logic, "validateInputs", lambda *args: {"class_names": ["liver"]})
    volume = slicer.util.addVolumeFromArray(np.zeros((4, 8, 8), np.float32), name="v")
    before = harness.sceneSnapshot()
    original = engine.engineCommand
    monkeypatch.setattr(engine, "engineCommand",
                        lambda *arguments, python=None: [python, "-c", FAKE_ENGINE, "stubborn"])
    monkeypatch.setattr(pairseg.PairSegLib.install, "ensureEngineReady", lambda askConfirmation=True: True)
    run = logic.segmentVolumeAsync(volume, str(tmp_path / "model.pairseg"), device="cpu")
    monkeypatch.setattr(engine, "engineCommand", original)
    while not any(e["event"] == "start" for e in run.events):
        run.poll()
        time.sleep(0.01)
    enginePid = next(e["pid"] for e in run.events if e["event"] == "start")
    assert run.command[:2] == [pythonSlicer, "-c"] and os.path.isdir(run.workDirectory)
    _, seconds = timed(run.shutdown)
    assert seconds < GUI_BUDGET_S
    assert run.state == "cancelled" and not os.path.exists(run.workDirectory)
    assert leftOver(run, enginePid) == set()
    assert harness.sceneSnapshot() == before


# -- Windows, simulated --------------------------------------------------------------------------


def test_windows_popen_has_no_console_and_own_group(engine, monkeypatch):
    keywords = engine.popenKeywords("nt")
    assert keywords["creationflags"] & 0x08000000, "CREATE_NO_WINDOW"
    assert keywords["creationflags"] & 0x00000200, "CREATE_NEW_PROCESS_GROUP"
    assert "start_new_session" not in keywords
    assert engine.popenKeywords("posix")["start_new_session"] is True
    # the real launcher on a simulated Windows: what reaches Popen
    seen = []

    class FakePopen:
        def __init__(self, command, **kwargs):
            seen.append((command, kwargs))
            self.pid = 4242

    monkeypatch.setattr(engine.os, "name", "nt")
    monkeypatch.setattr(engine.subprocess, "Popen", FakePopen)
    process = engine.launchProcess(["python", "-m", "pairseg", "train"])
    assert seen[0][1]["creationflags"] == engine.CREATE_NO_WINDOW | engine.CREATE_NEW_PROCESS_GROUP
    # Cancel on Windows: the whole tree, without psutil: taskkill /T /F, itself without a console
    monkeypatch.setitem(sys.modules, "psutil", None)
    engine.signalProcessTree(process, signal.SIGTERM, osName="nt")
    command, kwargs = seen[1]
    assert command == ["taskkill", "/PID", "4242", "/T", "/F"]
    assert kwargs["creationflags"] & engine.CREATE_NO_WINDOW


def test_every_process_of_both_modules_starts_through_the_bridge():
    """No other Popen / subprocess call in the modules' code: every child gets the bridge's
    session, tree kill and no-console flags."""
    offenders = []
    for folder in ("PairSeg", "PairSegTrainer"):
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                path = os.path.join(directory, name)
                if not name.endswith(".py") or path.endswith(os.path.join("PairSegLib", "engine.py")):
                    continue
                text = open(path, encoding="utf-8").read()
                for needle in ("subprocess.", "Popen(", "os.system(", "QProcess"):
                    if needle in text:
                        offenders.append(f"{os.path.relpath(path, ROOT)}: {needle}")
    assert not offenders


def test_own_group_is_never_signalled(engine):
    """A launcher that did not make a new session: only the child is signalled, never the group
    this process (Slicer) belongs to."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        engine.signalProcessTree(process, signal.SIGTERM)
        assert process.wait(5) == -signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
