"""Headless Slicer test harness — TEST-ONLY code, never shipped in the extension.

What is real here
-----------------
- MRML: the ``slicer-core`` wheel (``slicer.vtkMRMLScene``, ~400 MRML and module-logic classes,
  ``slicer.vtkSlicerScriptedLoadableModuleLogic``) and the real ``slicer.util``.
- Qt: PySide6 offscreen, seen through the PythonQt-like ``qt``/``ctk`` layer of
  ``Testing/pythonqt.py`` (real widgets, real ``.ui`` loading, real signals and timers).
- Slicer's pure-Python module support of a chosen RELEASE: ``slicer.parameterNodeWrapper``,
  ``slicer.ScriptedLoadableModule`` and ``slicer.i18n`` are Slicer's own unmodified files, read from
  ``../shared/third_party/slicer/<tag>/`` (or ``$PAIRSEG_SLICER_PYTHON_DIR/<tag>``), never copied
  into this repository. ``SLICER_RELEASES`` lists the releases the project supports.

What stays a stand-in (the C++ application cannot run here)
-----------------------------------------------------------
``slicer.app`` (a QApplication with the members module code and ``slicer.util`` use: module
manager, temporaryPath, testingEnabled, startupCompleted(), ...), the C++ module objects
``slicer.modules.<name>`` (qSlicerScriptedLoadableModule: title, dependencies, path,
``widgetRepresentation()``, and ``logic()`` returning a REAL ``vtkSlicerScriptedLoadableModuleLogic``
as in Slicer — not the Python logic), the module panel that hosts a module widget
(qSlicerScriptedLoadableModuleWidget: ``isEntered``, enter/exit), and the subject-hierarchy
items that the application's Qt plugins create.

Entry points
------------
``setUpSlicer() -> SlicerHarness``: once per process; one real scene with the application logic
and the module logics Colors, Volumes, Segmentations, SubjectHierarchy, Data, Tables and
Terminologies (``slicer.modules.<name>.logic()`` returns them, as in Slicer).
``resetScene()``, ``sceneSnapshot()``, ``loadVolume(path, name=None, labelmap=False)``.
``availableReleases()`` / ``useSlicerRelease(tag)``: switch the Slicer Python files in use.
``loadScriptedModule(moduleFilePath, release=None)``: what Slicer's scripted-module factory does
(module folder on sys.path, import, ``ModuleClass(parent)``, dependencies checked), registered as
``slicer.modules.<lowercase name>``. ``moduleWidget(name)``: the module's widget after ``setup()``,
hosted like in the module panel. ``unloadModules()``: ``moduleAboutToBeUnloaded`` -> ``cleanup()``.

The pytest fixtures built on this live in ``Testing/conftest.py``. Only tests import this file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tempfile
import types

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Slicer releases whose pure-Python module support the project supports (oldest first).
SLICER_RELEASES = ("v5.6.0", "v5.8.0", "v5.10.0")
#: Slicer's own Python modules read from the release folders.
SLICER_PYTHON_MODULES = ("parameterNodeWrapper", "ScriptedLoadableModule", "i18n")

_harness = None


def slicerPythonDir():
    """Folder holding ``<tag>/`` copies of Slicer's pure-Python files (see module docstring)."""
    return os.environ.get("PAIRSEG_SLICER_PYTHON_DIR",
                          os.path.join(os.path.dirname(REPOSITORY_ROOT), "shared", "third_party", "slicer"))


def qtAvailable():
    return importlib.util.find_spec("PySide6") is not None


# ----------------------------------------------------------------------------------------------
# Scene, application logic and module logics
# ----------------------------------------------------------------------------------------------


class _CoreModule:
    """``slicer.modules.<name>`` for the C++ core modules: ``logic()`` and ``name``."""

    def __init__(self, name, logicFactory):
        self.name = name
        self._logicFactory = logicFactory

    def logic(self):
        return self._logicFactory()

    def widgetRepresentation(self):
        return None


class _ModulesNamespace(types.SimpleNamespace):
    """``slicer.modules``: attributes are per-module objects; iteration gives their names."""

    def __iter__(self):
        return iter(vars(self))


class _ApplicationMembers:
    """The ``slicer.app`` members that module code and ``slicer.util`` use headless."""

    applicationName = "Slicer"
    majorVersion = 5
    minorVersion = 10

    def _initMembers(self, harness):
        self._harness = harness
        self.temporaryPath = tempfile.mkdtemp(prefix="slicer-harness-")
        self.slicerHome = REPOSITORY_ROOT
        self.commandOptions = types.SimpleNamespace(noMainWindow=True)
        self.moduleManagerObject = None

    def applicationLogic(self):
        return self._harness.appLogic

    def mrmlScene(self):
        return self._harness.scene

    def testingEnabled(self):
        return True

    def layoutManager(self):
        return None

    def pauseRender(self):
        pass

    def resumeRender(self):
        pass

    def moduleManager(self):
        return self.moduleManagerObject

    def restart(self):
        raise RuntimeError("the test harness cannot restart the application")


class _PlainApplication(_ApplicationMembers):
    """``slicer.app`` where no Qt binding is installed (logic tests only)."""

    def processEvents(self, *args):
        pass

    def connect(self, *args):
        pass


class SlicerHarness:
    """One real MRML scene with the application logic and module logics (see module docstring)."""

    #: module-logic registrations: (name used by SetModuleLogic, slicer.modules name, class name)
    MODULE_LOGICS = (
        ("Colors", "colors", "vtkSlicerColorLogic"),
        ("Volumes", "volumes", "vtkSlicerVolumesLogic"),
        ("Segmentations", "segmentations", "vtkSlicerSegmentationsModuleLogic"),
        ("SubjectHierarchy", "subjecthierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
        ("Data", "data", "vtkSlicerDataModuleLogic"),
        ("Tables", "tables", "vtkSlicerTablesLogic"),
        ("Terminologies", "terminologies", "vtkSlicerTerminologiesModuleLogic"),
    )

    def __init__(self):
        import slicer
        import vtk

        self.slicer = slicer
        # Quiet the "HomeDirectory is not set" message of the colour logic: no colour files here.
        vtk.vtkObject.GlobalWarningDisplayOff()
        self.scene = slicer.vtkMRMLScene()
        self.appLogic = slicer.vtkSlicerApplicationLogic()
        self.appLogic.SetMRMLScene(self.scene)
        self.moduleLogics = {}
        for registeredName, _, className in self.MODULE_LOGICS:
            logicClass = getattr(slicer, className, None)
            if logicClass is None:
                continue
            logic = logicClass()
            logic.SetMRMLApplicationLogic(self.appLogic)
            logic.SetMRMLScene(self.scene)
            self.appLogic.SetModuleLogic(registeredName, logic)
            self.moduleLogics[registeredName] = logic
        if "Colors" in self.moduleLogics:
            self.appLogic.SetColorLogic(self.moduleLogics["Colors"])
        vtk.vtkObject.GlobalWarningDisplayOn()

        slicer.mrmlScene = self.scene
        slicer.app = _makeApplication(self)
        modules = getattr(slicer, "modules", None)
        if not isinstance(modules, _ModulesNamespace):
            modules = _ModulesNamespace()
            slicer.modules = modules
        for registeredName, moduleName, _ in self.MODULE_LOGICS:
            if registeredName in self.moduleLogics:
                setattr(modules, moduleName,
                        _CoreModule(moduleName, lambda n=registeredName: self.moduleLogics[n]))
        self._observeSubjectHierarchy()

    # -- subject hierarchy: the application's Qt plugins create items; we do it here ------------

    def _observeSubjectHierarchy(self):
        import vtk
        from vtkmodules.util.misc import calldata_type

        # VTK 9.6 (the slicer-core wheel) lets Python's cycle collector free a Python observer
        # that a C++ object still calls when the cycle node wrapper -> observer -> owner -> node
        # wrapper has no other Python reference (segfault at the next event; 8-line reproduction:
        # an object holding a node and observing it with a lambda, del, gc.collect(), Modified()).
        # Slicer's parameterNodeWrapper makes exactly this cycle (connectGui), so keep the Python
        # wrapper of every parameter node alive while the node is in the scene.
        self._parameterNodeWrappers = {}

        @calldata_type(vtk.VTK_OBJECT)
        def onScriptedModuleNodeAdded(caller, event, node):
            if node is not None and node.IsA("vtkMRMLScriptedModuleNode"):
                self._parameterNodeWrappers[node.GetID()] = node

        @calldata_type(vtk.VTK_OBJECT)
        def onScriptedModuleNodeRemoved(caller, event, node):
            if node is not None:
                self._parameterNodeWrappers.pop(node.GetID(), None)

        @calldata_type(vtk.VTK_OBJECT)
        def onNodeAdded(caller, event, node):
            if node is None or not node.IsA("vtkMRMLStorableNode") or node.GetHideFromEditors():
                return
            if node.IsA("vtkMRMLColorNode") or node.IsA("vtkMRMLSubjectHierarchyNode"):
                return
            shNode = self.scene.GetSubjectHierarchyNode()
            if shNode is not None and not shNode.GetItemByDataNode(node):
                shNode.CreateItem(shNode.GetSceneItemID(), node)

        @calldata_type(vtk.VTK_OBJECT)
        def onNodeAboutToBeRemoved(caller, event, node):
            if node is None or node.IsA("vtkMRMLSubjectHierarchyNode"):
                return
            shNode = self.scene.GetSubjectHierarchyNode()
            if shNode is None:
                return
            itemId = shNode.GetItemByDataNode(node)
            if itemId:
                # Keep the data node: only the item goes (the node is being removed by the caller).
                shNode.RemoveItem(itemId, False, False)

        self._observers = [
            self.scene.AddObserver(self.scene.NodeAddedEvent, onNodeAdded),
            self.scene.AddObserver(self.scene.NodeAboutToBeRemovedEvent, onNodeAboutToBeRemoved),
            self.scene.AddObserver(self.scene.NodeAddedEvent, onScriptedModuleNodeAdded),
            self.scene.AddObserver(self.scene.NodeRemovedEvent, onScriptedModuleNodeRemoved),
        ]

    def subjectHierarchy(self):
        """The scene's subject-hierarchy node (created when missing)."""
        return self.slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(self.scene)

    def resetScene(self):
        self.scene.Clear(0)
        colors = self.moduleLogics.get("Colors")
        if colors is not None and not self.scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode"):
            # a test closed the scene with its singletons (Clear(1)): default colours back
            import vtk

            vtk.vtkObject.GlobalWarningDisplayOff()
            colors.AddDefaultColorNodes()
            vtk.vtkObject.GlobalWarningDisplayOn()
        self.subjectHierarchy()
        return self.scene


def setUpSlicer() -> SlicerHarness:
    """Create (once per process) and return the harness; sets slicer.mrmlScene/app/modules."""
    global _harness
    if _harness is None:
        _harness = SlicerHarness()
    return _harness


def resetScene():
    return setUpSlicer().resetScene()


def sceneSnapshot(scene=None):
    """Sorted (class name, node name) of every node in the scene."""
    if scene is None:
        scene = setUpSlicer().scene
    return sorted(
        (scene.GetNthNode(i).GetClassName(), scene.GetNthNode(i).GetName() or "")
        for i in range(scene.GetNumberOfNodes())
    )


def loadVolume(path, name=None, labelmap=False, scene=None):
    """Read an image file into a new scalar (or labelmap) volume node through MRML storage."""
    import slicer

    scene = scene or setUpSlicer().scene
    className = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    if name is None:
        name = os.path.basename(path).split(".")[0]
    storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storageNode.SetFileName(str(path))
    if labelmap:
        storageNode.SetCenterImage(False)
    volumeNode = scene.AddNewNodeByClass(className, name)
    scene.AddNode(storageNode)
    volumeNode.SetAndObserveStorageNodeID(storageNode.GetID())
    if not storageNode.ReadData(volumeNode):
        scene.RemoveNode(volumeNode)
        scene.RemoveNode(storageNode)
        raise IOError(f"could not read {path}")
    volumeNode.CreateDefaultDisplayNodes()
    return volumeNode




def _makeApplication(harness):
    """A QApplication with the ``slicer.app`` members when Qt is available, else a plain object."""
    if not qtAvailable():
        app = _PlainApplication()
        app._initMembers(harness)
        return app
    import pythonqt

    qt, _ = pythonqt.install()
    settingsDir = tempfile.mkdtemp(prefix="slicer-harness-settings-")
    qt.QSettings.setDefaultFormat(qt.QSettings.IniFormat)
    qt.QSettings.setPath(qt.QSettings.IniFormat, qt.QSettings.UserScope, settingsDir)

    class SlicerApplication(_ApplicationMembers, qt.QApplication):
        """qSlicerApplication stand-in: a real QApplication plus the members listed above."""

        startupCompleted = pythonqt.Signal()

        def userSettings(self):
            return qt.QSettings()

        def settings(self):
            return qt.QSettings()

    app = pythonqt.application(SlicerApplication)
    if not isinstance(app, _ApplicationMembers):
        raise RuntimeError("a QApplication was created before the Slicer harness")
    app.setOrganizationName("PairSegTests")
    app.setApplicationName("Slicer")
    app._initMembers(harness)
    app.moduleManagerObject = _moduleManager(qt, pythonqt)
    return app


# ----------------------------------------------------------------------------------------------
# Slicer's pure-Python module support, per release
# ----------------------------------------------------------------------------------------------


def availableReleases():
    """The releases of SLICER_RELEASES whose files are present (see slicerPythonDir())."""
    return [tag for tag in SLICER_RELEASES if os.path.isdir(os.path.join(slicerPythonDir(), tag, "parameterNodeWrapper"))]


_currentRelease = None


def currentRelease():
    return _currentRelease


def useSlicerRelease(tag):
    """Make ``slicer.parameterNodeWrapper`` / ``ScriptedLoadableModule`` / ``i18n`` those of ``tag``.

    Modules imported from a previous release (and scripted module files imported on top of them)
    are dropped first, so the next import runs the files of ``tag``. Raises FileNotFoundError when
    the release's files are absent.
    """
    global _currentRelease
    import slicer

    folder = os.path.join(slicerPythonDir(), tag)
    if not os.path.isdir(os.path.join(folder, "parameterNodeWrapper")):
        raise FileNotFoundError(f"Slicer {tag} Python files not found in {folder}")
    if _currentRelease == tag:
        return folder
    unloadModules()
    for name in list(sys.modules):
        if any(name == f"slicer.{m}" or name.startswith(f"slicer.{m}.") for m in SLICER_PYTHON_MODULES):
            del sys.modules[name]
    for m in SLICER_PYTHON_MODULES:
        if m in vars(slicer):
            delattr(slicer, m)
    releaseDirs = {os.path.join(slicerPythonDir(), t) for t in SLICER_RELEASES}
    slicer.__path__ = [p for p in slicer.__path__ if p not in releaseDirs] + [folder]
    major, minor = (int(part) for part in tag.lstrip("v").split(".")[:2])
    slicer.app.majorVersion, slicer.app.minorVersion = major, minor
    for m in SLICER_PYTHON_MODULES:
        setattr(slicer, m, importlib.import_module(f"slicer.{m}"))
    _currentRelease = tag
    return folder


# ----------------------------------------------------------------------------------------------
# C++ module objects, module manager and module panel (stand-ins for the application)
# ----------------------------------------------------------------------------------------------

_retiredPanels = []
_loadedModules = {}  # name -> (python module, qSlicerScriptedLoadableModule stand-in)


def _moduleManager(qt, pythonqt):
    import slicer

    class qSlicerModuleManager(qt.QObject):
        """Stand-in: module(name), moduleAboutToBeUnloaded(QString), factoryManager()."""

        moduleAboutToBeUnloaded = pythonqt.Signal(str)

        def module(self, name):
            entry = _loadedModules.get(name)
            return entry[1] if entry else None

        def factoryManager(self):
            return types.SimpleNamespace(loadedModuleNames=lambda: list(_loadedModules))

    class qSlicerScriptedLoadableModule(qt.QObject):
        """Stand-in for the C++ module object a scripted module's class is given as ``parent``."""

        title = pythonqt.Property(str, lambda s: s._values.get("title", ""), lambda s, v: s._values.__setitem__("title", v))
        categories = pythonqt.Property("QStringList", lambda s: s._values.get("categories", []),
                                       lambda s, v: s._values.__setitem__("categories", list(v)))
        dependencies = pythonqt.Property("QStringList", lambda s: s._values.get("dependencies", []),
                                         lambda s, v: s._values.__setitem__("dependencies", list(v)))
        contributors = pythonqt.Property("QStringList", lambda s: s._values.get("contributors", []),
                                         lambda s, v: s._values.__setitem__("contributors", list(v)))
        helpText = pythonqt.Property(str, lambda s: s._values.get("helpText", ""),
                                     lambda s, v: s._values.__setitem__("helpText", v))
        acknowledgementText = pythonqt.Property(str, lambda s: s._values.get("acknowledgementText", ""),
                                                lambda s, v: s._values.__setitem__("acknowledgementText", v))
        icon = pythonqt.Property(qt.QIcon, lambda s: s._values.get("icon", qt.QIcon()),
                                 lambda s, v: s._values.__setitem__("icon", v))

        def __init__(self, name, path):
            super().__init__()
            self._values = {}
            self.path = path
            self.setObjectName(name)
            self._logic = None
            self._widgetRepresentation = None
            self.moduleClass = None

        def logic(self):
            """As in Slicer: the C++ vtkSlicerScriptedLoadableModuleLogic, NOT the Python Logic."""
            if self._logic is None:
                self._logic = slicer.vtkSlicerScriptedLoadableModuleLogic()
                self._logic.SetMRMLScene(slicer.mrmlScene)
            return self._logic

        def widgetRepresentation(self):
            if self._widgetRepresentation is None:
                widgetClass = getattr(sys.modules[self.moduleClass.__module__], self.name + "Widget")
                panel = qSlicerScriptedLoadableModuleWidget()
                panel.setLayout(qt.QVBoxLayout())
                panel.setMRMLScene(slicer.mrmlScene)
                panel._pythonWidget = widgetClass(panel)
                panel._pythonWidget.setup()
                self._widgetRepresentation = panel
            return self._widgetRepresentation

        def createNewWidgetRepresentation(self):
            self._widgetRepresentation = None
            return self.widgetRepresentation()

    class qSlicerScriptedLoadableModuleWidget(slicer.qSlicerWidget):
        """Stand-in for the module panel: ``self()``, ``isEntered``, ``enter()``/``exit()``."""

        def __init__(self):
            super().__init__()
            self._entered = False
            self._pythonWidget = None

        isEntered = pythonqt.Property(bool, lambda s: s._entered)

        def self(self):
            return self._pythonWidget

        def enter(self):
            self._entered = True
            if hasattr(self._pythonWidget, "enter"):
                self._pythonWidget.enter()

        def exit(self):
            if hasattr(self._pythonWidget, "exit"):
                self._pythonWidget.exit()
            self._entered = False

    slicer.qSlicerScriptedLoadableModule = qSlicerScriptedLoadableModule
    slicer.qSlicerScriptedLoadableModuleWidget = qSlicerScriptedLoadableModuleWidget
    return qSlicerModuleManager()


def loadScriptedModule(moduleFilePath, release=None):
    """Load a scripted module file the way Slicer's scripted-module factory does.

    Uses the Slicer Python files of ``release`` (default: the current one, else the newest
    available). Its declared dependencies must be loaded already (Slicer loads them first and
    refuses a module whose dependency is missing). Returns the Python module.
    """
    import slicer

    setUpSlicer()
    if not qtAvailable():
        raise RuntimeError("PySide6 is needed to load a scripted module (pip install PySide6-Essentials)")
    release = release or _currentRelease or (availableReleases() or [None])[-1]
    if release is None:
        raise FileNotFoundError(f"no Slicer Python files in {slicerPythonDir()} (releases {SLICER_RELEASES})")
    useSlicerRelease(release)
    moduleFilePath = os.path.abspath(str(moduleFilePath))
    moduleDir = os.path.dirname(moduleFilePath)
    moduleName = os.path.splitext(os.path.basename(moduleFilePath))[0]
    if moduleName in _loadedModules:
        return _loadedModules[moduleName][0]
    for path in (os.path.join(REPOSITORY_ROOT, "src"), moduleDir):
        if path not in sys.path:
            sys.path.insert(0, path)
    # Slicer registers every module of its module paths before it runs any module file, and
    # registering one appends its folder to sys.path (ctkFactoryScriptedItem::load): a module
    # file may import a Lib of another module (its dependency) at the top, whichever runs first.
    for name in sorted(os.listdir(os.path.dirname(moduleDir))):
        sibling = os.path.join(os.path.dirname(moduleDir), name)
        if os.path.isfile(os.path.join(sibling, name + ".py")) and sibling not in sys.path:
            sys.path.append(sibling)
    spec = importlib.util.spec_from_file_location(moduleName, moduleFilePath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[moduleName] = module
    spec.loader.exec_module(module)
    parent = slicer.qSlicerScriptedLoadableModule(moduleName, moduleFilePath)
    moduleClass = getattr(module, moduleName)
    parent.moduleClass = moduleClass
    parent.moduleObject = moduleClass(parent)
    for dependency in parent.dependencies:
        # Slicer loads a module's dependencies first (from its module paths), and refuses the
        # module when one is missing.
        if dependency not in _loadedModules:
            dependencyPath = os.path.join(os.path.dirname(moduleDir), dependency, dependency + ".py")
            if not os.path.isfile(dependencyPath):
                del sys.modules[moduleName]
                raise RuntimeError(f"{moduleName} depends on {dependency}, which is not found")
            loadScriptedModule(dependencyPath, release)
    _loadedModules[moduleName] = (module, parent)
    setattr(slicer.modules, moduleName.lower(), parent)
    return module


def moduleWidget(moduleName):
    """The module's Python widget after setup(), in its panel (created on first call)."""
    return _loadedModules[moduleName][1].widgetRepresentation().self()


def unloadModules():
    """Unload every loaded scripted module like Slicer does on exit (cleanup() through the signal)."""
    import slicer

    manager = slicer.app.moduleManager() if hasattr(slicer, "app") else None
    for name in reversed(list(_loadedModules)):
        module, parent = _loadedModules.pop(name)
        if manager is not None:
            manager.moduleAboutToBeUnloaded.emit(name)
        if parent._widgetRepresentation is not None:
            # Slicer deletes module panels only at exit: keep the widgets alive (observers that a
            # module forgot to remove still find a live widget, as they would in Slicer).
            _retiredPanels.append(parent._widgetRepresentation)
        if hasattr(slicer.modules, name.lower()):
            delattr(slicer.modules, name.lower())
        if sys.modules.get(name) is module:
            del sys.modules[name]
