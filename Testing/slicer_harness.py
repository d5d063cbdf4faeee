"""Headless Slicer test harness — TEST-ONLY code, never shipped in the extension.

What it gives
-------------
The ``slicer-core`` wheel provides real MRML (``slicer.vtkMRMLScene`` and ~400 wrapped MRML and
module-logic classes) plus the real ``slicer.util``, but no application: there is no
``slicer.app``, ``slicer.mrmlScene``, ``slicer.modules``, ``qt``, ``ctk`` or
``slicer.ScriptedLoadableModule``. This file fills exactly those gaps so that the Logic classes of
the PairSeg and PairSegTrainer scripted modules run unchanged against a real scene:

``setUpSlicer() -> SlicerHarness``
    Once per process (idempotent). Builds one real ``vtkMRMLScene`` with a
    ``vtkSlicerApplicationLogic`` and the module logics Colors (default colour nodes), Volumes,
    Segmentations, SubjectHierarchy, Data, Tables and Terminologies, registered with
    ``SetModuleLogic`` like the application does. Sets ``slicer.mrmlScene``,
    ``slicer.modules.<name>.logic()`` (lower-case names, as in Slicer) and a small ``slicer.app``
    stand-in (``temporaryPath``, ``processEvents``, ``testingEnabled``, ``connect``, ...).
    Subject-hierarchy items, created by Qt plugins in the application, are created and removed
    here by scene observers (NodeAdded / NodeAboutToBeRemoved) for storable, visible nodes.

``resetScene() -> vtkMRMLScene``
    Clears the scene (``Clear(0)``: default colour nodes survive, as in "Close scene").

``installModuleStandIns()``
    Import-time stand-ins so a scripted module FILE can be imported: permissive ``qt`` and
    ``ctk`` modules (every attribute is an inert dummy), ``slicer.ScriptedLoadableModule`` (the
    four base classes; ``getParameterNode()`` returns a real singleton
    ``vtkMRMLScriptedModuleNode``), ``slicer.parameterNodeWrapper`` (a small typed wrapper that
    stores plain values as node parameters and MRML nodes as node references) and ``slicer.i18n``.
    Real modules of those names, when present (inside Slicer), are never replaced.

``loadScriptedModule(moduleFilePath) -> python module``
    Installs the stand-ins, puts the module's folder (and the repository root, for the
    ``pairseg`` engine) on ``sys.path`` like Slicer does, imports the file, and registers
    ``slicer.modules.<lowercase name>`` with ``logic()`` (a ``<Name>Logic`` instance) and ``path``.

``sceneSnapshot(scene=None)``
    Sorted (class, name) pairs of all nodes, for "the scene is unchanged" assertions.

``loadVolume(path, name=None, labelmap=False)``
    Reads an image file into a new volume node through a real ``vtkMRMLVolumeArchetypeStorageNode``
    (the path Slicer's "Add data" takes), without ``slicer.util.loadVolume`` (needs the app's IO
    manager, absent here).

The pytest fixtures built on this live in ``Testing/conftest.py`` (``slicer_harness``,
``mrml_scene``, ``load_module``). Only tests import this file; module code must never need it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import tempfile
import types
import typing
import unittest

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_harness = None


# ----------------------------------------------------------------------------------------------
# Scene, application logic and module logics
# ----------------------------------------------------------------------------------------------


class _ModuleNamespace:
    """What ``slicer.modules.<name>`` is in the application, reduced to ``logic()`` and ``path``."""

    def __init__(self, name, logicFactory, path=""):
        self.name = name
        self.path = path
        self._logicFactory = logicFactory
        self._logic = None

    def logic(self):
        if self._logic is None:
            self._logic = self._logicFactory()
        return self._logic

    def widgetRepresentation(self):
        return None


class _ModulesNamespace(types.SimpleNamespace):
    """``slicer.modules``: attributes are per-module namespaces; iteration gives their names."""

    def __iter__(self):
        return iter(vars(self))


class _ApplicationStandIn:
    """The few ``slicer.app`` members that logic code and ``slicer.util`` use headless."""

    applicationName = "Slicer (headless test harness)"
    majorVersion = 5
    minorVersion = 13

    def __init__(self, harness):
        self._harness = harness
        self.temporaryPath = tempfile.mkdtemp(prefix="slicer-harness-")
        self.slicerHome = REPOSITORY_ROOT
        self.commandOptions = types.SimpleNamespace(noMainWindow=True)

    def applicationLogic(self):
        return self._harness.appLogic

    def mrmlScene(self):
        return self._harness.scene

    def testingEnabled(self):
        return True

    def processEvents(self, *args):
        pass

    def connect(self, *args):
        pass

    def layoutManager(self):
        return None

    def pauseRender(self):
        pass

    def resumeRender(self):
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
        slicer.app = _ApplicationStandIn(self)
        modules = getattr(slicer, "modules", None)
        if not isinstance(modules, _ModulesNamespace):
            modules = _ModulesNamespace()
            slicer.modules = modules
        for registeredName, moduleName, _ in self.MODULE_LOGICS:
            if registeredName in self.moduleLogics:
                setattr(modules, moduleName,
                        _ModuleNamespace(moduleName, lambda n=registeredName: self.moduleLogics[n]))
        self._observeSubjectHierarchy()

    # -- subject hierarchy: the application's Qt plugins create items; we do it here ------------

    def _observeSubjectHierarchy(self):
        import vtk
        from vtkmodules.util.misc import calldata_type

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
        ]

    def subjectHierarchy(self):
        """The scene's subject-hierarchy node (created when missing)."""
        return self.slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(self.scene)

    def resetScene(self):
        self.scene.Clear(0)
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


# ----------------------------------------------------------------------------------------------
# Import-time stand-ins for qt, ctk and the ScriptedLoadableModule framework
# ----------------------------------------------------------------------------------------------


class _Inert:
    """Any qt/ctk name: callable, subclassable, every attribute is another inert object."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert()

    def __bool__(self):
        return False

    def __iter__(self):
        return iter(())

    def __or__(self, other):
        return self

    __ror__ = __or__


class _InertModule(types.ModuleType):
    """A module whose every attribute is an inert class (so ``class X(qt.QObject)`` works)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        inertClass = type(name, (_Inert,), {})
        setattr(self, name, inertClass)
        return inertClass


def _moduleResourcePath(moduleClassOrInstance, filename):
    moduleFile = sys.modules[type(moduleClassOrInstance).__module__].__file__
    return os.path.join(os.path.dirname(moduleFile), "Resources", filename)


class ScriptedLoadableModule:
    """Stand-in for slicer.ScriptedLoadableModule.ScriptedLoadableModule."""

    def __init__(self, parent=None):
        if parent is None:
            parent = types.SimpleNamespace()
        self.parent = parent
        self.moduleName = type(self).__name__
        parent.title = self.moduleName
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = ""
        parent.acknowledgementText = ""

    def resourcePath(self, filename):
        return _moduleResourcePath(self, filename)

    def getDefaultModuleDocumentationLink(self, docPage=""):
        return ""


class ScriptedLoadableModuleWidget:
    """Stand-in for the widget base; only enough for construction (no GUI headless)."""

    def __init__(self, parent=None):
        self.parent = parent
        self.moduleName = type(self).__name__[: -len("Widget")]
        self.developerMode = False

    def resourcePath(self, filename):
        return _moduleResourcePath(self, filename)

    def setup(self):
        pass

    def cleanup(self):
        pass


class ScriptedLoadableModuleLogic:
    """Stand-in for the logic base with a real singleton parameter node in slicer.mrmlScene."""

    def __init__(self, parent=None):
        name = type(self).__name__
        self.moduleName = name[: -len("Logic")] if name.endswith("Logic") else name

    def getParameterNode(self):
        import slicer

        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetName(scene.GenerateUniqueName(self.moduleName))
            node.SetSingletonTag(self.moduleName)
            node.SetModuleName(self.moduleName)
            node.SetHideFromEditors(True)
            node = scene.AddNode(node)
        return node

    def setDefaultParameters(self, parameterNode):
        pass


class ScriptedLoadableModuleTest(unittest.TestCase):
    """Stand-in for the self-test base: delayDisplay only logs."""

    def delayDisplay(self, message, msec=0):
        logging.info(message)


def _unwrapAnnotation(annotation):
    if typing.get_origin(annotation) is typing.Annotated:
        return typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if args else str
    return annotation


def parameterNodeWrapper(cls):
    """Stand-in for slicer.parameterNodeWrapper.parameterNodeWrapper.

    Plain values (str, int, float, bool, pathlib.Path) are stored as parameters of the wrapped
    ``vtkMRMLScriptedModuleNode``, MRML nodes as its node references. Defaults come from the
    class attributes.
    """
    import pathlib

    import slicer

    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {}
    for fieldName, annotation in hints.items():
        fieldType = _unwrapAnnotation(annotation)
        fields[fieldName] = (fieldType, getattr(cls, fieldName, None))

    def isNodeType(fieldType):
        return isinstance(fieldType, type) and issubclass(fieldType, slicer.vtkMRMLNode)

    def makeProperty(fieldName, fieldType, default):
        def getter(self):
            node = self.parameterNode
            if isNodeType(fieldType):
                return node.GetNodeReference(fieldName)
            if not node.GetParameter(fieldName) and fieldName not in self._set:
                return default
            text = node.GetParameter(fieldName)
            if fieldType is bool:
                return text == "True"
            if fieldType in (int, float):
                return fieldType(text)
            if fieldType is pathlib.Path:
                return pathlib.Path(text)
            return text

        def setter(self, value):
            node = self.parameterNode
            if isNodeType(fieldType):
                node.SetNodeReferenceID(fieldName, value.GetID() if value is not None else None)
            else:
                self._set.add(fieldName)
                node.SetParameter(fieldName, str(value))

        return property(getter, setter)

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        self._set = set()
        for fieldName, (fieldType, default) in fields.items():
            if not isNodeType(fieldType) and parameterNode.GetParameter(fieldName) == "" \
                    and default is not None:
                setattr(self, fieldName, default)

    namespace = {"__init__": __init__, "__doc__": cls.__doc__, "_fields": fields,
                 "StartModify": lambda self: 0, "EndModify": lambda self, wasModified: None,
                 "AddObserver": lambda self, *args: self.parameterNode.AddObserver(*args),
                 "RemoveObserver": lambda self, tag: self.parameterNode.RemoveObserver(tag)}
    for fieldName, (fieldType, default) in fields.items():
        namespace[fieldName] = makeProperty(fieldName, fieldType, default)
    for name, value in vars(cls).items():
        if callable(value) and not name.startswith("__"):
            namespace[name] = value
    return type(cls.__name__, (), namespace)


def installModuleStandIns():
    """Register the test-only qt, ctk and slicer.* stand-ins (never over real modules)."""
    import slicer

    for name in ("qt", "ctk"):
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except ImportError:
                sys.modules[name] = _InertModule(name)

    if "slicer.ScriptedLoadableModule" not in sys.modules:
        module = types.ModuleType("slicer.ScriptedLoadableModule")
        module.ScriptedLoadableModule = ScriptedLoadableModule
        module.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
        module.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
        module.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
        module.__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget",
                          "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest"]
        sys.modules[module.__name__] = module
        slicer.ScriptedLoadableModule = module

    if "slicer.parameterNodeWrapper" not in sys.modules:
        module = types.ModuleType("slicer.parameterNodeWrapper")
        module.parameterNodeWrapper = parameterNodeWrapper

        class _Marker:
            def __init__(self, *args, **kwargs):
                self.args = args

        for markerName in ("WithinRange", "Choice", "Default", "Minimum", "Maximum", "Decimals",
                           "SingleStep", "Label"):
            setattr(module, markerName, type(markerName, (_Marker,), {}))
        sys.modules[module.__name__] = module
        slicer.parameterNodeWrapper = module

    if "slicer.i18n" not in sys.modules:
        module = types.ModuleType("slicer.i18n")
        module.tr = lambda text: text
        module.translate = lambda context, text: text
        sys.modules[module.__name__] = module
        slicer.i18n = module


def loadScriptedModule(moduleFilePath):
    """Import a scripted module file headless and register slicer.modules.<name>."""
    import slicer

    setUpSlicer()
    installModuleStandIns()
    moduleFilePath = os.path.abspath(str(moduleFilePath))
    moduleDir = os.path.dirname(moduleFilePath)
    moduleName = os.path.splitext(os.path.basename(moduleFilePath))[0]
    for path in (os.path.join(REPOSITORY_ROOT, "src"), moduleDir):
        if path not in sys.path:
            sys.path.insert(0, path)
    if moduleName in sys.modules and getattr(sys.modules[moduleName], "__file__", None) \
            and os.path.abspath(sys.modules[moduleName].__file__) == moduleFilePath:
        module = sys.modules[moduleName]
    else:
        spec = importlib.util.spec_from_file_location(moduleName, moduleFilePath)
        module = importlib.util.module_from_spec(spec)
        sys.modules[moduleName] = module
        spec.loader.exec_module(module)
    logicClass = getattr(module, moduleName + "Logic", None)
    if logicClass is not None:
        setattr(slicer.modules, moduleName.lower(),
                _ModuleNamespace(moduleName.lower(), logicClass, moduleFilePath))
    return module
