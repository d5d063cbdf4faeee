"""A PythonQt-like ``qt`` / ``ctk`` layer over a real Qt binding (PySide6) — TEST-ONLY code.

Slicer's Python sees Qt through PythonQt. Module code written for Slicer relies on what PythonQt
does and plain PySide6 does not; this file adds exactly that on top of REAL Qt widgets, so that a
module's widget (its ``.ui`` file, its ``setup()``, the clicks) and Slicer's real pure-Python
``parameterNodeWrapper`` run against real ``QCheckBox``/``QSpinBox``/... objects offscreen
(``QT_QPA_PLATFORM=offscreen``):

- ``qt``: every QtCore/QtGui/QtWidgets name. QObject classes are thin subclasses that give
  PythonQt's semantics: Qt properties read and written as attributes (``button.text``,
  ``combo.currentIndex = 2``; a property shadows the getter method of the same name, as in
  PythonQt), ``name`` for ``objectName``, ``obj.connect("clicked(bool)", callable)`` /
  ``disconnect`` with C++ signatures (a signature the class does not have raises), and
  ``findChildren(qt.QWidget)`` over all widgets. ``isinstance`` against a ``qt`` class accepts every
  object of that Qt class, as in PythonQt where there is one wrapper per Qt class.
- ``qt.QUiLoader``: loads a ``.ui`` file with Qt's QUiLoader, creating the CTK and qMRML custom
  widgets registered here. Properties of custom widgets and the file's ``<connections>`` are
  applied by this layer, strictly: an unknown property, class, signal or slot is an error (Qt would
  only print a warning).
- ``ctk``: the CTK widgets the project's .ui files and code use (ctkCollapsibleButton,
  ctkPathLineEdit with its settings history, ctkDoubleSpinBox) with CTK's API, and the other CTK
  class names Slicer's GUI connectors test against (so that ``type(widget) in (...)`` checks run).
- ``slicer`` gains the qMRML widgets over REAL MRML: qMRMLWidget, qSlicerWidget, qMRMLNodeComboBox
  (lists and follows the nodes of the scene), qMRMLTableView (shows a table node), and the class
  names Slicer's connectors name.

What stays a stand-in (no C++ Slicer application here) lives in ``slicer_harness.py``.
"""

from __future__ import annotations

import os
import re
import sys
import types
import xml.etree.ElementTree as ElementTree

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets  # noqa: E402

Signal = QtCore.Signal
Property = QtCore.Property

_QT_MODULES = (QtCore, QtGui, QtWidgets)
_ObjectType = type(QtCore.QObject)


# ----------------------------------------------------------------------------------------------
# PythonQt semantics on top of PySide6 classes
# ----------------------------------------------------------------------------------------------


class _PythonQtClass(_ObjectType):
    """Metaclass of the ``qt`` wrappers: ``isinstance(obj, qt.QWidget)`` holds for every QWidget."""

    def __instancecheck__(cls, obj):
        qtBase = cls.__dict__.get("_qtBase")
        if qtBase is not None:
            return isinstance(obj, qtBase)
        return _ObjectType.__instancecheck__(cls, obj)

    def __subclasscheck__(cls, subclass):
        qtBase = cls.__dict__.get("_qtBase")
        if qtBase is not None:
            return issubclass(subclass, qtBase)
        return _ObjectType.__subclasscheck__(cls, subclass)


_propertyNames = {}


def qtPropertyNames(obj):
    """Names of the Qt properties (meta-object, including Python-declared ones) of ``obj``."""
    cls = type(obj)
    names = _propertyNames.get(cls)
    if names is None:
        meta = QtCore.QObject.metaObject(obj)
        names = frozenset(meta.property(i).name() for i in range(meta.propertyCount()))
        _propertyNames[cls] = names
    return names


def _cppType(typeName):
    typeName = typeName.strip()
    if typeName.startswith("const "):
        typeName = typeName[len("const "):]
    typeName = typeName.rstrip("&").strip()
    if typeName.endswith("*"):  # vtkMRMLNode*, vtkMRMLScene*, vtkObject*: Python objects here
        return "PyObject"
    return typeName


def normalizedSignature(obj, signature, kind="signal"):
    """The meta-object signature of ``signature`` (a C++ signal signature) on ``obj``.

    Raises AttributeError when the object's class has no such signal (PythonQt fails too).
    """
    match = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", signature)
    if not match:
        raise AttributeError(f"not a Qt {kind} signature: {signature!r}")
    name, arguments = match.groups()
    argumentTypes = [_cppType(a) for a in arguments.split(",") if a.strip()]
    normalized = f"{name}({','.join(argumentTypes)})"
    meta = QtCore.QObject.metaObject(obj)
    index = meta.indexOfSignal(normalized) if kind == "signal" else meta.indexOfMethod(normalized)
    if index < 0:
        raise AttributeError(f"{type(obj).__name__} has no {kind} {signature!r}")
    return normalized


def _unwrapType(cls):
    return cls.__dict__.get("_qtBase", cls) if isinstance(cls, type) else cls


class PythonQtMixin:
    """Attribute access, connections and child look-up the PythonQt way (see module docstring)."""

    def __init__(self, *args, **kwargs):
        try:
            super().__init__(*args, **kwargs)
        except TypeError:
            # PythonQt's second, non-strict overload pass converts any object to QString with str()
            # (so Slicer's own ``qt.QMenu(self)`` with a Python widget object makes a titled menu).
            converted = tuple(a if isinstance(a, (QtCore.QObject, str, int, float, bool, type(None), list, tuple))
                              else str(a) for a in args)
            if converted == args:
                raise
            super().__init__(*converted, **kwargs)

    def __getattribute__(self, name):
        if name[:1] != "_":
            if name in qtPropertyNames(self):
                return QtCore.QObject.property(self, name)
            if name == "name":
                return QtCore.QObject.objectName(self)
            if name in _MIXIN_METHODS:
                # PySide resolves these on the instance before the class: bind ours explicitly.
                return types.MethodType(_MIXIN_METHODS[name], self)
        return super().__getattribute__(name)

    def __setattr__(self, name, value):
        if name[:1] != "_":
            if name in qtPropertyNames(self):
                if isinstance(value, tuple):  # PythonQt takes any sequence for a list property
                    value = list(value)
                if not QtCore.QObject.setProperty(self, name, value):
                    raise TypeError(f"cannot set Qt property {type(self).__name__}.{name} to {value!r}")
                return
            if name == "name":
                QtCore.QObject.setObjectName(self, value)
                return
        super().__setattr__(name, value)

    def connect(self, *args):
        if len(args) == 2 and isinstance(args[0], str):
            signature = normalizedSignature(self, args[0])
            return QtCore.QObject.connect(self, QtCore.SIGNAL(signature), args[1])
        return QtCore.QObject.connect(self, *args)

    def disconnect(self, *args):
        if len(args) == 2 and isinstance(args[0], str):
            signature = normalizedSignature(self, args[0])
            return QtCore.QObject.disconnect(self, QtCore.SIGNAL(signature), args[1])
        return QtCore.QObject.disconnect(self, *args)

    def findChildren(self, *args):
        if args and isinstance(args[0], type):
            args = (_unwrapType(args[0]),) + args[1:]
        return QtCore.QObject.findChildren(self, *args)

    def findChild(self, *args):
        if args and isinstance(args[0], type):
            args = (_unwrapType(args[0]),) + args[1:]
        return QtCore.QObject.findChild(self, *args)


_MIXIN_METHODS = {name: PythonQtMixin.__dict__[name] for name in ("connect", "disconnect", "findChildren", "findChild")}
_wrappers = {}


def wrapQtClass(qtClass):
    """The ``qt`` class for a PySide6 QObject class (created once)."""
    wrapper = _wrappers.get(qtClass)
    if wrapper is None:
        wrapper = _PythonQtClass(qtClass.__name__, (PythonQtMixin, qtClass),
                                 {"_qtBase": qtClass, "__module__": "qt"})
        _wrappers[qtClass] = wrapper
    return wrapper


class _QtModule(types.ModuleType):
    """``qt``: every QtCore/QtGui/QtWidgets name; QObject classes come wrapped (PythonQt-like)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        for module in _QT_MODULES:
            value = getattr(module, name, None)
            if value is not None:
                if isinstance(value, type) and issubclass(value, QtCore.QObject):
                    value = wrapQtClass(value)
                setattr(self, name, value)
                return value
        raise AttributeError(f"module 'qt' has no attribute {name!r}")


qt = _QtModule("qt")
ctk = types.ModuleType("ctk")
ctk.__doc__ = "CTK widgets for the tests (see Testing/pythonqt.py)."


# ----------------------------------------------------------------------------------------------
# CTK
# ----------------------------------------------------------------------------------------------


class ctkCollapsibleButton(qt.QAbstractButton):
    """A button that shows/hides its children (CTK: collapsed, contentsCollapsed(bool))."""

    contentsCollapsed = Signal(bool)

    def __init__(self, *args):
        text = args[0] if args and isinstance(args[0], str) else None
        parent = args[-1] if args and not isinstance(args[-1], str) else None
        super().__init__(parent)
        self._collapsed = False
        if text is not None:
            self.setText(text)
        self.setCheckable(True)
        self.setChecked(True)
        self.toggled.connect(lambda checked: self.setCollapsed(not checked))

    def paintEvent(self, event):
        pass

    def sizeHint(self):
        return QtCore.QSize(100, 20)

    def isCollapsed(self):
        return self._collapsed

    def setCollapsed(self, collapsed):
        collapsed = bool(collapsed)
        if collapsed == self._collapsed:
            return
        self._collapsed = collapsed
        self.setChecked(not collapsed)
        for child in QtCore.QObject.findChildren(self, QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            child.setVisible(not collapsed)
        self.contentsCollapsed.emit(collapsed)

    collapsed = Property(bool, isCollapsed, setCollapsed)


class ctkPathLineEdit(qt.QWidget):
    """CTK's path editor: an editable combo box (history from QSettings under ``settingKey``).

    API as in CTK: ``currentPath`` (+ ``currentPathChanged(QString)``), ``filters`` (QDir-like
    flags), ``nameFilters``, ``settingKey``, ``addCurrentPathToHistory()``, ``retrieveHistory()``.
    """

    Dirs, Files, Drives, NoSymLinks = 0x001, 0x002, 0x004, 0x008
    AllEntries = Dirs | Files | Drives
    Readable, Writable, Executable = 0x010, 0x020, 0x040
    Hidden, System = 0x100, 0x200
    MAX_HISTORY = 5

    currentPathChanged = Signal(str)
    validInputChanged = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._filters = self.AllEntries | self.NoSymLinks | self.Readable
        self._nameFilters = []
        self._settingKey = ""
        self._lastPath = ""
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._comboBox = QtWidgets.QComboBox(self)
        self._comboBox.setEditable(True)
        self._comboBox.setObjectName("")
        layout.addWidget(self._comboBox)
        self._comboBox.editTextChanged.connect(self._onTextChanged)

    def _onTextChanged(self, text):
        if text != self._lastPath:
            self._lastPath = text
            self.currentPathChanged.emit(text)

    def getCurrentPath(self):
        return self._comboBox.currentText()

    def setCurrentPath(self, path):
        self._comboBox.setEditText(str(path))

    currentPath = Property(str, getCurrentPath, setCurrentPath, notify=currentPathChanged)

    def getFilters(self):
        return self._filters

    def setFilters(self, filters):
        self._filters = int(filters)

    filters = Property(int, getFilters, setFilters)

    def getNameFilters(self):
        return list(self._nameFilters)

    def setNameFilters(self, nameFilters):
        self._nameFilters = list(nameFilters)

    nameFilters = Property("QStringList", getNameFilters, setNameFilters)

    def getSettingKey(self):
        return self._settingKey

    def setSettingKey(self, key):
        self._settingKey = key
        self.retrieveHistory()

    settingKey = Property(str, getSettingKey, setSettingKey)

    def _history(self):
        if not self._settingKey:
            return []
        value = QtCore.QSettings().value(self._settingKey)
        if value is None:
            return []
        return [value] if isinstance(value, str) else list(value)

    def retrieveHistory(self):
        current = self.getCurrentPath()
        self._comboBox.blockSignals(True)
        self._comboBox.clear()
        self._comboBox.addItems(self._history())
        self._comboBox.setEditText(current)
        self._comboBox.blockSignals(False)

    def addCurrentPathToHistory(self):
        """Put the current path first in the history (saved in QSettings under settingKey)."""
        path = self.getCurrentPath()
        if not path or not self._settingKey:
            return
        history = [path] + [p for p in self._history() if p != path]
        QtCore.QSettings().setValue(self._settingKey, history[:self.MAX_HISTORY])
        self.retrieveHistory()

    def comboBox(self):
        return self._comboBox


class ctkDoubleSpinBox(qt.QWidget):
    """CTK's double spin box: a QWidget holding a QDoubleSpinBox (value, range, decimals...)."""

    valueChanged = Signal(float)
    editingFinished = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._spinBox = QtWidgets.QDoubleSpinBox(self)
        layout.addWidget(self._spinBox)
        self._spinBox.valueChanged.connect(self.valueChanged.emit)
        self._spinBox.editingFinished.connect(self.editingFinished.emit)

    def spinBox(self):
        return self._spinBox

    def _forward(name, kind):
        setterName = "set" + name[0].upper() + name[1:]

        def get(self):
            return getattr(self._spinBox, name)()

        def set(self, value):
            getattr(self._spinBox, setterName)(value)

        return Property(kind, get, set)

    value = _forward("value", float)
    minimum = _forward("minimum", float)
    maximum = _forward("maximum", float)
    decimals = _forward("decimals", int)
    singleStep = _forward("singleStep", float)
    suffix = _forward("suffix", str)
    prefix = _forward("prefix", str)
    del _forward

    def setValue(self, value):
        self._spinBox.setValue(value)

    def setRange(self, minimum, maximum):
        self._spinBox.setRange(minimum, maximum)

    def setMinimum(self, value):
        self._spinBox.setMinimum(value)

    def setMaximum(self, value):
        self._spinBox.setMaximum(value)

    def setDecimals(self, value):
        self._spinBox.setDecimals(value)

    def setSingleStep(self, value):
        self._spinBox.setSingleStep(value)


class _NamedOnly(qt.QWidget):
    """CTK/qMRML classes that Slicer's GUI connectors name in their ``type(widget)`` checks.

    They exist so those checks run; the project's .ui files do not use them (the static check
    Testing/test_static_checks.py fails if a .ui file names a class that has no real behaviour here).
    """

    namedOnly = True


for _name, _base in (("ctkCheckBox", qt.QCheckBox), ("ctkComboBox", qt.QComboBox),
                     ("ctkCheckablePushButton", qt.QPushButton), ("ctkSliderWidget", _NamedOnly),
                     ("ctkRangeWidget", _NamedOnly), ("ctkDoubleSlider", _NamedOnly),
                     ("ctkDoubleRangeSlider", _NamedOnly), ("ctkColorPickerButton", _NamedOnly),
                     ("ctkDirectoryButton", _NamedOnly)):
    setattr(ctk, _name, type(_name, (_base,), {"__module__": "ctk", "namedOnly": True}))
for _class in (ctkCollapsibleButton, ctkPathLineEdit, ctkDoubleSpinBox):
    _class.__module__ = "ctk"
    setattr(ctk, _class.__name__, _class)


# ----------------------------------------------------------------------------------------------
# qMRML widgets over real MRML
# ----------------------------------------------------------------------------------------------


class qMRMLWidget(qt.QWidget):
    """QWidget with an MRML scene: ``setMRMLScene`` emits ``mrmlSceneChanged(vtkMRMLScene*)``."""

    mrmlSceneChanged = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._mrmlScene = None

    def mrmlScene(self):
        return self._mrmlScene

    @QtCore.Slot(object)
    def setMRMLScene(self, scene):
        self._mrmlScene = scene
        self.mrmlSceneChanged.emit(scene)


class qSlicerWidget(qMRMLWidget):
    """Slicer's base widget (same scene API as qMRMLWidget)."""


def _stringListProperty(attribute, onChange=None):
    def getter(self):
        return list(getattr(self, attribute))

    def setter(self, value):
        setattr(self, attribute, [str(v) for v in value])
        if onChange is not None:
            onChange(self)

    return Property("QStringList", getter, setter)


def _plainProperty(kind, attribute, onChange=None):
    def getter(self):
        return getattr(self, attribute)

    def setter(self, value):
        setattr(self, attribute, kind(value))
        if onChange is not None:
            onChange(self)

    return Property(kind, getter, setter)


class qMRMLNodeComboBox(qt.QWidget):
    """Node selector over a real scene: lists the nodes of ``nodeTypes`` and follows the scene.

    As in Slicer: without ``noneEnabled`` the first matching node is selected when one appears;
    a removed current node is deselected; ``currentNodeChanged(vtkMRMLNode*)`` and
    ``currentNodeChanged(bool)`` and ``currentNodeIDChanged(QString)`` are emitted on change;
    ``addNode()`` creates a node of the first type (``baseName``), as the "Create new" entry does.
    """

    currentNodeChanged = Signal((object,), (bool,))
    currentNodeIDChanged = Signal(str)
    nodeAdded = Signal(object)
    nodeAddedByUser = Signal(object)
    nodeAboutToBeRemoved = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._nodeTypes = []
        self._hideChildNodeTypes = []
        self._showChildNodeTypes = True
        self._showHidden = False
        self._noneEnabled = False
        self._addEnabled = True
        self._removeEnabled = True
        self._renameEnabled = False
        self._editEnabled = False
        self._selectNodeUponCreation = True
        self._noneDisplay = "None"
        self._baseName = ""
        self._attributes = {}
        self._scene = None
        self._observations = []
        self._nodes = []
        self._current = None
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._comboBox = QtWidgets.QComboBox(self)
        layout.addWidget(self._comboBox)
        self._comboBox.activated.connect(self._onActivated)

    def _refresh(self):
        self._rebuild()

    nodeTypes = _stringListProperty("_nodeTypes", _refresh)
    hideChildNodeTypes = _stringListProperty("_hideChildNodeTypes", _refresh)
    showChildNodeTypes = _plainProperty(bool, "_showChildNodeTypes", _refresh)
    showHidden = _plainProperty(bool, "_showHidden", _refresh)
    noneEnabled = _plainProperty(bool, "_noneEnabled", _refresh)
    addEnabled = _plainProperty(bool, "_addEnabled")
    removeEnabled = _plainProperty(bool, "_removeEnabled")
    renameEnabled = _plainProperty(bool, "_renameEnabled")
    editEnabled = _plainProperty(bool, "_editEnabled")
    selectNodeUponCreation = _plainProperty(bool, "_selectNodeUponCreation")
    noneDisplay = _plainProperty(str, "_noneDisplay", _refresh)
    baseName = _plainProperty(str, "_baseName")

    # -- scene -----------------------------------------------------------------------------

    def mrmlScene(self):
        return self._scene

    @QtCore.Slot(object)
    def setMRMLScene(self, scene):
        import vtk
        from vtkmodules.util.misc import calldata_type

        for observed, tag in self._observations:
            observed.RemoveObserver(tag)
        self._observations = []
        self._scene = scene
        if scene is not None:
            @calldata_type(vtk.VTK_OBJECT)
            def onNodeAdded(caller, event, node):
                if self._accepts(node):
                    self._rebuild()
                    self.nodeAdded.emit(node)

            @calldata_type(vtk.VTK_OBJECT)
            def onNodeRemoved(caller, event, node):
                if node in self._nodes:
                    self.nodeAboutToBeRemoved.emit(node)
                    self._rebuild(removed=node)

            self._observations = [(scene, scene.AddObserver(scene.NodeAddedEvent, onNodeAdded)),
                                  (scene, scene.AddObserver(scene.NodeRemovedEvent, onNodeRemoved))]
        self._rebuild()

    def addAttribute(self, nodeType, name, value=None):
        self._attributes[(nodeType, name)] = value
        self._rebuild()

    def _accepts(self, node):
        if node is None or not self._nodeTypes:
            return False
        if not any(node.IsA(t) for t in self._nodeTypes):
            return False
        if not self._showChildNodeTypes and node.GetClassName() not in self._nodeTypes:
            return False
        if any(node.IsA(t) for t in self._hideChildNodeTypes):
            return False
        if not self._showHidden and node.GetHideFromEditors():
            return False
        for (nodeType, name), value in self._attributes.items():
            if node.IsA(nodeType) and (node.GetAttribute(name) is None
                                       or (value is not None and node.GetAttribute(name) != str(value))):
                return False
        return True

    def _rebuild(self, removed=None):
        scene = self._scene
        nodes = []
        if scene is not None:
            for i in range(scene.GetNumberOfNodes()):
                node = scene.GetNthNode(i)
                if node is not removed and self._accepts(node):
                    nodes.append(node)
        self._nodes = nodes
        combo = self._comboBox
        combo.blockSignals(True)
        combo.clear()
        if self._noneEnabled:
            combo.addItem(self._noneDisplay)
        for node in nodes:
            combo.addItem(node.GetName() or node.GetID())
        combo.blockSignals(False)
        current = self._current if self._current in nodes else None
        if current is None and not self._noneEnabled and nodes:
            current = nodes[0]
        self._select(current)

    def _onActivated(self, index):
        offset = 1 if self._noneEnabled else 0
        self._select(self._nodes[index - offset] if index >= offset else None)

    def _select(self, node):
        changed = node is not self._current
        self._current = node
        index = (self._nodes.index(node) if node is not None else -1) + (1 if self._noneEnabled else 0)
        self._comboBox.blockSignals(True)
        self._comboBox.setCurrentIndex(index if (node is not None or self._noneEnabled) else -1)
        self._comboBox.blockSignals(False)
        if changed:
            self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")
            self.currentNodeChanged[object].emit(node)
            self.currentNodeChanged[bool].emit(node is not None)

    # -- API -------------------------------------------------------------------------------

    def currentNode(self):
        return self._current

    def currentNodeID(self):
        return self._current.GetID() if self._current is not None else ""

    @QtCore.Slot(object)
    def setCurrentNode(self, node):
        if node is not None and node not in self._nodes:
            self._rebuild()
            if node not in self._nodes:
                raise ValueError(f"{node.GetClassName()} '{node.GetName()}' is not listed by this selector "
                                 f"(nodeTypes {self._nodeTypes})")
        self._select(node)

    def setCurrentNodeID(self, nodeID):
        self.setCurrentNode(self._scene.GetNodeByID(nodeID) if nodeID else None)

    def nodeCount(self):
        return len(self._nodes)

    def nodeFromIndex(self, index):
        return self._nodes[index]

    def addNode(self, nodeType=None):
        """Create a node of the first type, as the combo box's "Create new ..." entry does."""
        if not self._addEnabled:
            raise RuntimeError("this selector does not create nodes (addEnabled is false)")
        nodeType = nodeType or self._nodeTypes[0]
        baseName = self._baseName or self._scene.CreateNodeByClass(nodeType).GetNodeTagName()
        node = self._scene.AddNewNodeByClass(nodeType, self._scene.GenerateUniqueName(baseName))
        self.nodeAddedByUser.emit(node)
        if self._selectNodeUponCreation:
            self.setCurrentNode(node)
        return node

    def removeCurrentNode(self):
        if self._current is not None and self._removeEnabled:
            self._scene.RemoveNode(self._current)

    def nodeNames(self):
        """The names shown in the list (test helper)."""
        return [self._comboBox.itemText(i) for i in range(self._comboBox.count())]


class qMRMLTableView(qt.QTableView):
    """Shows a ``vtkMRMLTableNode`` (header = column names) in a real QTableView."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._tableNode = None
        self._model = QtGui.QStandardItemModel(self)
        self.setModel(self._model)

    @QtCore.Slot(object)
    def setMRMLScene(self, scene):
        self._scene = scene

    def mrmlTableNode(self):
        return self._tableNode

    @QtCore.Slot(object)
    def setMRMLTableNode(self, tableNode):
        self._tableNode = tableNode
        self._model.clear()
        if tableNode is None:
            return
        table = tableNode.GetTable()
        columns = table.GetNumberOfColumns()
        self._model.setHorizontalHeaderLabels([table.GetColumnName(c) for c in range(columns)])
        for row in range(table.GetNumberOfRows()):
            self._model.appendRow([QtGui.QStandardItem(table.GetValue(row, c).ToString()) for c in range(columns)])

    def cellText(self, row, column):
        """The text shown in a cell (test helper)."""
        return self._model.item(row, column).text()


QMRML_CLASSES = {cls.__name__: cls for cls in (qMRMLWidget, qSlicerWidget, qMRMLNodeComboBox, qMRMLTableView)}
for _name in ("qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget", "qMRMLSegmentSelectorWidget"):
    QMRML_CLASSES[_name] = type(_name, (_NamedOnly,), {"__module__": "slicer", "namedOnly": True})


# ----------------------------------------------------------------------------------------------
# .ui loading
# ----------------------------------------------------------------------------------------------


def customWidgetClass(className):
    """The class this layer creates for a custom (CTK/qMRML) .ui class name, or None."""
    cls = getattr(ctk, className, None) or QMRML_CLASSES.get(className)
    return cls if isinstance(cls, type) else None


def widgetClass(className):
    """The class created for any .ui class name; raises for a name with no implementation here."""
    cls = customWidgetClass(className)
    if cls is None and className.startswith("Q"):
        cls = getattr(qt, className, None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, QtWidgets.QWidget)):
        raise RuntimeError(f"no widget class {className!r} (not Qt, CTK or qMRML as provided by Testing/pythonqt.py)")
    if getattr(cls, "namedOnly", False) and cls.__dict__.get("namedOnly"):
        raise RuntimeError(f"{className} is only named here (for Slicer's connector checks), not implemented")
    return cls


def _resolveEnum(text, widget):
    """'ctkPathLineEdit::Files|ctkPathLineEdit::Dirs' or 'Qt::Vertical' -> value."""
    value = 0
    for part in text.split("|"):
        scope, _, name = part.strip().rpartition("::")
        owner = customWidgetClass(scope) or getattr(qt, scope, None) if scope else type(widget)
        if owner is None or not hasattr(owner, name):
            raise RuntimeError(f"unknown enum value {part!r}")
        value = value | getattr(owner, name)
    return value


def _propertyValue(element, widget):
    """Python value of a .ui <property> element (the kinds the project's .ui files use)."""
    (valueElement,) = list(element)
    kind, text = valueElement.tag, valueElement.text or ""
    if kind in ("string", "cstring"):
        return text
    if kind == "bool":
        return text.strip() == "true"
    if kind == "number":
        return int(text)
    if kind == "double":
        return float(text)
    if kind == "stringlist":
        return [child.text or "" for child in valueElement]
    if kind in ("set", "enum"):
        return _resolveEnum(text, widget)
    if kind == "size":
        return QtCore.QSize(int(valueElement.find("width").text), int(valueElement.find("height").text))
    if kind == "rect":
        return QtCore.QRect(*(int(valueElement.find(tag).text) for tag in ("x", "y", "width", "height")))
    raise RuntimeError(f"property kind <{kind}> is not handled for custom widgets")


class UiLoader(QtUiTools.QUiLoader):
    """QUiLoader creating this layer's classes; strict about custom properties and connections."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._pendingProperties = []

    def createWidget(self, className, parent=None, name=""):
        widget = widgetClass(className)(parent)
        widget.setObjectName(name)
        return widget

    def load(self, source, parentWidget=None):
        if isinstance(source, QtCore.QIODevice):
            data = bytes(source.readAll())
        else:
            with open(str(source), "rb") as stream:
                data = stream.read()
        root = ElementTree.fromstring(data)
        customProperties = []
        for element in root.iter("widget"):
            if customWidgetClass(element.get("class")) is None:
                continue
            for propertyElement in list(element.findall("property")):
                customProperties.append((element.get("name"), propertyElement))
                element.remove(propertyElement)
        connections = []
        connectionsElement = root.find("connections")
        if connectionsElement is not None:
            connections = [{child.tag: child.text for child in connection} for connection in connectionsElement]
            root.remove(connectionsElement)
        buffer = QtCore.QBuffer()
        buffer.setData(ElementTree.tostring(root))
        buffer.open(QtCore.QIODevice.ReadOnly)
        top = super().load(buffer, parentWidget)
        if top is None:
            raise RuntimeError(f"QUiLoader failed: {self.errorString()}")

        def find(name):
            widget = top if QtCore.QObject.objectName(top) == name else QtCore.QObject.findChild(top, QtCore.QObject, name)
            if widget is None:
                raise RuntimeError(f".ui names a widget {name!r} that was not created")
            return widget

        for widgetName, propertyElement in customProperties:
            widget = find(widgetName)
            name = propertyElement.get("name")
            value = _propertyValue(propertyElement, widget)
            if propertyElement.get("stdset") == "0":
                QtCore.QObject.setProperty(widget, name, value)
            elif name in qtPropertyNames(widget):
                setattr(widget, name, value)
            else:
                raise RuntimeError(f"{type(widget).__name__} '{widgetName}' has no property {name!r}")
        for connection in connections:
            sender, receiver = find(connection["sender"]), find(connection["receiver"])
            signal = normalizedSignature(sender, connection["signal"])
            slotName = connection["slot"].split("(")[0]
            slot = getattr(receiver, slotName, None)
            if not callable(slot):
                raise RuntimeError(f"{type(receiver).__name__} '{connection['receiver']}' has no slot {connection['slot']!r}")
            QtCore.QObject.connect(sender, QtCore.SIGNAL(signal), slot)
        return top


qt.QUiLoader = UiLoader

_application = None


def application(applicationClass=None):
    """The one QApplication of the process (created offscreen on first call)."""
    global _application
    if _application is None:
        existing = QtWidgets.QApplication.instance()
        if existing is not None:
            _application = existing
        else:
            _application = (applicationClass or qt.QApplication)([sys.argv[0] if sys.argv else "pytest"])
    return _application


def install():
    """Register ``qt`` and ``ctk`` in sys.modules and the qMRML widgets on ``slicer``."""
    import slicer

    sys.modules["qt"] = qt
    sys.modules["ctk"] = ctk
    for name, cls in QMRML_CLASSES.items():
        setattr(slicer, name, cls)
    return qt, ctk
