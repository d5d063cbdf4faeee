"""Static checks of the Slicer modules: what breaks on first contact with a real Slicer.

- every ``self.ui.X`` / ``ui.X`` the code uses is a widget of the module's .ui, and every attribute
  the code reads or calls on it exists on that widget's class (the classes the widgets really have
  once the .ui is loaded);
- every signal the code connects by name (``X.connect("signal(args)", ...)``) exists on its class;
- every ``SlicerParameterName`` names a parameter, carries ``stdset="0"``, and has a GUI connector
  for its widget in EACH supported Slicer release (Slicer's own connector code decides);
- all module and engine code parses with Python 3.9's grammar (Slicer 5.6) and has no runtime
  ``X | Y`` annotations outside ``from __future__ import annotations``;
- packaging facts: one placeholder repository URL, the 5.8+ template's CMake range, no tracked
  file that .gitignore lists.
"""

import ast
import json
import os
import re
import subprocess
import xml.etree.ElementTree as ElementTree

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = {
    "PairSeg": {"ui": "PairSeg/Resources/UI/PairSeg.ui", "code": ["PairSeg/PairSeg.py", "PairSeg/PairSegLib/segmentpanel.py"],
                "parameters": "PairSegParameterNode"},
    "PairSegTrainer": {"ui": "PairSegTrainer/Resources/UI/PairSegTrainer.ui",
                       "code": ["PairSegTrainer/PairSegTrainer.py", "PairSegTrainer/PairSegTrainerLib/widget.py"],
                       "parameters": "PairSegTrainerParameterNode"},
}


def _path(relative):
    return os.path.join(ROOT, relative)


def _uiWidgets(uiFile):
    """{name: (class, {property: element})} of the widgets of a .ui file."""
    root = ElementTree.parse(_path(uiFile)).getroot()
    return {w.get("name"): (w.get("class"), {p.get("name"): p for p in w.findall("property")})
            for w in root.iter("widget")}


def _uiUses(codeFile):
    """[(widget name, attribute or None, signal signature or None, line)] for ``self.ui.X...`` and
    ``ui.X...`` (``ui`` bound to ``self.ui``) in a code file."""
    tree = ast.parse(open(_path(codeFile), encoding="utf-8").read())
    uses = []

    def uiName(node):
        # self.ui.X  or  ui.X
        if isinstance(node, ast.Attribute):
            base = node.value
            if isinstance(base, ast.Attribute) and base.attr == "ui" and isinstance(base.value, ast.Name) \
                    and base.value.id == "self":
                return node.attr
            if isinstance(base, ast.Name) and base.id == "ui":
                return node.attr
        return None

    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    for node in ast.walk(tree):
        name = uiName(node)
        if name is None:
            continue
        parent = parents.get(node)
        attribute = parent.attr if isinstance(parent, ast.Attribute) and parent.value is node else None
        signal = None
        if attribute in ("connect", "disconnect"):
            call = parents.get(parent)
            if isinstance(call, ast.Call) and call.args and isinstance(call.args[0], ast.Constant) \
                    and isinstance(call.args[0].value, str):
                signal = call.args[0].value
        uses.append((name, attribute, signal, node.lineno))
    return uses


@pytest.fixture(scope="module")
def loadedUis(slicer_harness):
    """The .ui files loaded by the Qt layer (real widgets, the classes they have in the modules)."""
    import slicer_harness as harness

    if not harness.qtAvailable():
        pytest.skip("PySide6 not installed")
    import pythonqt

    loaded = {}
    for moduleName, spec in MODULES.items():
        top = pythonqt.UiLoader().load(_path(spec["ui"]))
        loaded[moduleName] = {name: top.findChild(pythonqt.QtCore.QObject, name) for name in _uiWidgets(spec["ui"])}
        loaded[moduleName]["__top__"] = top
    return loaded


@pytest.mark.parametrize("moduleName", sorted(MODULES))
def test_ui_names_attributes_and_signals_exist(moduleName, loadedUis):
    import pythonqt

    spec = MODULES[moduleName]
    widgets = loadedUis[moduleName]
    problems = []
    for codeFile in spec["code"]:
        for name, attribute, signal, line in _uiUses(codeFile):
            where = f"{codeFile}:{line}"
            widget = widgets.get(name)
            if widget is None:
                problems.append(f"{where}: ui.{name} is not a widget of {spec['ui']}")
                continue
            if attribute is not None and not (hasattr(widget, attribute) or attribute in pythonqt.qtPropertyNames(widget)):
                problems.append(f"{where}: ui.{name} ({type(widget).__name__}) has no attribute {attribute!r}")
            if signal is not None:
                try:
                    pythonqt.normalizedSignature(widget, signal)
                except AttributeError as error:
                    problems.append(f"{where}: {error}")
    assert not problems, "\n".join(problems)


def test_checker_sees_a_wrong_name_attribute_and_signal(tmp_path, loadedUis, monkeypatch):
    """The check above fails on the kinds of mistakes it is there for."""
    bad = tmp_path / "Bad.py"
    bad.write_text("class W:\n    def setup(self):\n        self.ui.applyButon.click()\n"
                   "        self.ui.applyButton.connect('clickd()', self.f)\n        self.ui.statusLabel.setTxt('')\n")
    monkeypatch.setitem(MODULES, "Bad", {"ui": MODULES["PairSeg"]["ui"], "code": [str(bad)], "parameters": ""})
    loadedUis["Bad"] = loadedUis["PairSeg"]
    with pytest.raises(AssertionError) as failure:
        test_ui_names_attributes_and_signals_exist("Bad", loadedUis)
    text = str(failure.value)
    assert "applyButon" in text and "clickd()" in text and "setTxt" in text


def test_other_connected_signals_exist(slicer_harness):
    """Signals connected by name outside ``ui``: the module timers and the application."""
    import slicer_harness as harness

    if not harness.qtAvailable():
        pytest.skip("PySide6 not installed")
    import pythonqt
    import slicer

    found = []
    for path in ["PairSeg/PairSeg.py", "PairSeg/PairSegLib/segmentpanel.py", "PairSegTrainer/PairSegTrainer.py", "PairSegTrainer/PairSegTrainerLib/widget.py",
                 "PairSeg/PairSegLib/gui.py", "PairSeg/PairSegLib/fill.py"]:
        text = open(_path(path), encoding="utf-8").read()
        for owner, signal in re.findall(r"(\w+)\.connect\(\"([^\"]+)\"", text):
            if owner in ("timer",):
                pythonqt.normalizedSignature(pythonqt.qt.QTimer(), signal)
                found.append(signal)
            elif owner == "app":
                pythonqt.normalizedSignature(slicer.app, signal)
                found.append(signal)
    assert "timeout()" in found and "startupCompleted()" in found


def test_slicer_parameter_names_stdset_and_parameters(load_module):
    for moduleName, spec in MODULES.items():
        module = load_module(moduleName)
        parameterClass = getattr(module, spec["parameters"])
        for name, (className, properties) in _uiWidgets(spec["ui"]).items():
            element = properties.get("SlicerParameterName")
            if element is None:
                continue
            assert element.get("stdset") == "0", f"{spec['ui']}: {name}: SlicerParameterName without stdset=\"0\""
            parameter = element.find("string").text
            top, _, field = parameter.partition(".")   # "training.lr": a field of a parameter pack
            assert top in parameterClass.allParameters and (not field or field in parameterClass.dataType(top).allParameters), \
                f"{spec['ui']}: {name} names unknown parameter {parameter}"


@pytest.mark.parametrize("moduleName", sorted(MODULES))
def test_every_parameter_widget_has_a_connector_in_each_release(moduleName, slicer_release, load_module, loadedUis):
    """Fault 2 class: a parameter bound to a widget Slicer's connectors of that release cannot
    represent makes the module panel fail to open ("Unable to create GUI connector")."""
    import slicer.parameterNodeWrapper as pnw

    spec = MODULES[moduleName]
    parameterClass = getattr(load_module(moduleName), spec["parameters"])
    widgets = loadedUis[moduleName]
    failures = []
    for name, (className, properties) in _uiWidgets(spec["ui"]).items():
        element = properties.get("SlicerParameterName")
        if element is None:
            continue
        parameter = element.find("string").text
        try:
            pnw.createGuiConnector(widgets[name], parameterClass.dataType(parameter))
        except RuntimeError as error:
            failures.append(f"{name} ({className}) <- {parameter}: {error}")
    assert not failures, f"Slicer {slicer_release}:\n" + "\n".join(failures)


def test_ctkDoubleSpinBox_float_connector_appears_in_5_8(slicer_release, slicer_harness):
    """Why the Trainer uses QDoubleSpinBox: Slicer 5.6 has no float connector for ctkDoubleSpinBox."""
    import ctk
    import slicer.parameterNodeWrapper as pnw

    widget = ctk.ctkDoubleSpinBox()
    if slicer_release == "v5.6.0":
        with pytest.raises(RuntimeError, match="Unable to create GUI connector"):
            pnw.createGuiConnector(widget, float)
    else:
        assert pnw.createGuiConnector(widget, float) is not None


# -- Python 3.9 (Slicer 5.6) ---------------------------------------------------------------------


def _pythonFiles():
    folders = ["PairSeg", "PairSegTrainer", "src/pairseg"]
    files = []
    for folder in folders:
        for directory, _, names in os.walk(_path(folder)):
            files += [os.path.join(directory, n) for n in names if n.endswith(".py")]
    return sorted(files)


def _runtimeUnionAnnotations(tree):
    """Line numbers of ``X | Y`` in annotations evaluated at run time (no future import)."""
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
                 for n in tree.body)
    if future:
        return []
    lines = []
    annotations = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotations += [a.annotation for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs]
            annotations += [node.args.vararg.annotation if node.args.vararg else None,
                            node.args.kwarg.annotation if node.args.kwarg else None, node.returns]
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
    for annotation in annotations:
        if annotation is None:
            continue
        for sub in ast.walk(annotation):
            if isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.BitOr):
                lines.append(sub.lineno)
    return lines


def test_module_and_engine_code_is_python39():
    assert len(_pythonFiles()) > 30
    problems = []
    for path in _pythonFiles():
        source = open(path, encoding="utf-8").read()
        try:
            tree = ast.parse(source, filename=path, feature_version=(3, 9))
        except SyntaxError as error:
            problems.append(f"{os.path.relpath(path, ROOT)}:{error.lineno}: not Python 3.9 syntax ({error.msg})")
            continue
        for line in _runtimeUnionAnnotations(tree):
            problems.append(f"{os.path.relpath(path, ROOT)}:{line}: X | Y annotation evaluated at run time on 3.9")
    assert not problems, "\n".join(problems)


def test_python39_checks_see_the_faults():
    with pytest.raises(SyntaxError):
        ast.parse("match x:\n    case 1:\n        pass\n", feature_version=(3, 9))
    assert _runtimeUnionAnnotations(ast.parse("def f(a: int | None) -> str | None:\n    pass\n")) == [1, 1]
    assert _runtimeUnionAnnotations(ast.parse("from __future__ import annotations\nx: int | None = 1\n")) == []


# -- packaging ----------------------------------------------------------------------------------


def _repositoryUrl():
    text = open(_path("CMakeLists.txt"), encoding="utf-8").read()
    urls = re.findall(r'set\(PAIRSEG_REPOSITORY_URL "([^"]+)"\)', text)
    assert len(urls) == 1
    return urls[0], text


def test_one_placeholder_repository_url():
    url, cmake = _repositoryUrl()
    assert "PLACEHOLDER" in url
    entry = json.load(open(_path("PairSeg.json"), encoding="utf-8"))
    assert entry["scm_url"] == url + ".git"
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        value = re.search(rf'set\({variable} "([^"]+)"\)', cmake).group(1)
        assert "${PAIRSEG_" in value and "github" not in value, variable
    for relative in re.findall(r"\$\{PAIRSEG_RAW_URL\}/([\w/.\-]+)", cmake):
        assert os.path.isfile(_path(relative)), relative
    # no other repository URL of the project anywhere in the modules, engine or docs
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    others = []
    for relative in tracked:
        if relative.endswith((".py", ".md", ".txt", ".json", ".cmake", ".ui")) and relative not in ("CMakeLists.txt", "PairSeg.json"):
            text = open(_path(relative), encoding="utf-8", errors="replace").read()
            if re.search(r"github(usercontent)?\.com/[\w-]+/SlicerPairSeg", text, re.IGNORECASE) and "PLACEHOLDER" not in text:
                others.append(relative)
    assert not others, f"repository URLs outside CMakeLists.txt/PairSeg.json: {others}"


def test_cmake_range_of_the_5_8_template():
    _, cmake = _repositoryUrl()
    assert "cmake_minimum_required(VERSION 3.20.6...3.22.6 FATAL_ERROR)" in cmake


def test_no_tracked_file_is_ignored():
    ignored = subprocess.run(["git", "ls-files", "-ci", "--exclude-standard"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert ignored == []


def test_every_ui_class_is_real_in_the_test_layer():
    """.ui classes the modules use must have real behaviour in Testing/pythonqt.py (not only a name)."""
    import slicer_harness as harness

    if not harness.qtAvailable():
        pytest.skip("PySide6 not installed")
    import pythonqt

    for spec in MODULES.values():
        for name, (className, _) in _uiWidgets(spec["ui"]).items():
            pythonqt.widgetClass(className)  # raises for a named-only or unknown class
