"""GUI wiring of the PairSegTrainer module (Qt only here; all work goes through the Logic).

``TrainerPanel`` connects the widgets of ``Resources/UI/PairSegTrainer.ui`` to the parameter
node and to ``PairSegTrainerLogic``; a QTimer polls the background run (the engine process) and
moves its progress, ETA, log and curves into the GUI. The Train button turns into Stop while a
training runs; a stopped run can be resumed from its checkpoint (of this session, or one an
earlier session left beside the output model).

One runner for every background run (``self.runs``: training, segmentation, predicted proxy
maps): the timer polls them all, so a second run (Show AND/XOR during a training) never replaces
the training (``self.trainingRun``), whose curves keep updating and whose model is registered.
Module clean-up kills every run's process tree; a scene close stops the training (resumable
checkpoint), cancels the other runs (their results belonged to the closed scene) and detaches
the plots, so that nothing of the old scene is written into the new one.
"""

import json
import os
import traceback

import qt
import slicer
from PairSegLib import engine, gui

from . import runsettings, trainingrun
from .trainingset import IGNORE, TrainingItem, segmentNames

classKey = engine.torchFreeEngineModule("constants").class_key   # the engine's one class-name rule

POLL_MS = 500


class TrainerPanel:
    def __init__(self, ui, logic, parameterClass, moduleWidget):
        self.ui = ui
        self.logic = logic
        self.parameterClass = parameterClass
        self.moduleWidget = moduleWidget
        self._parameterNode = self._guiObserver = self._nodeObserverTag = None
        self.runs = []  # every run the timer follows (one runner)
        # the run started last (any kind), the training of self.runs if any, the last training (Resume)
        self.latestRun = self.trainingRun = self.lastTrainingRun = None
        self.timer = gui.pollTimer(POLL_MS, self.onTimer)
        self._fillCombos()
        self._connect()
        self.initializeParameterNode()
        self.updateGui()

    # -- set-up ------------------------------------------------------------------------------

    def _fillCombos(self):
        ui = self.ui
        for name, label in runsettings.ARCHITECTURES:
            ui.architectureComboBox.addItem(label, name)
        for modality in runsettings.MODALITIES:
            ui.modalityComboBox.addItem(modality, modality)
        for mode in runsettings.PAIR_MODES:
            ui.pairModeComboBox.addItem(mode, mode)
        self.fillDevices(probe=False)
        self.refreshModelPickers()

    def refreshModelPickers(self):
        """Catalog (ready) models and registered / recent models (``models.modelChoices``, the
        list the PairSeg module shows) in both pickers: current model and fine-tune-from."""
        from PairSegLib import models

        choices = models.modelChoices(self.logic.registry)
        for combo, prompt in ((self.ui.currentModelsComboBox, "Ready or registered model..."),
                              (self.ui.initFromModelsComboBox, "Ready or registered model...")):
            combo.blockSignals(True)
            combo.clear()
            combo.addItem(prompt, "")
            for label, path, tip in choices:
                combo.addItem(label, path)
                combo.setItemData(combo.count - 1, tip, qt.Qt.ToolTipRole)
            combo.setCurrentIndex(0)
            combo.blockSignals(False)

    def onModelPicked(self, combo, pathEdit, index):
        path = combo.itemData(index)
        if path:
            pathEdit.currentPath = path    # the edit's signal sets the parameter
        combo.setCurrentIndex(0)

    def fillDevices(self, probe):
        """Device menu from the logic (``probe``: ask torch for GPUs); keeps the chosen device."""
        combo = self.ui.deviceComboBox
        current = combo.currentData if combo.count else "auto"
        combo.blockSignals(True)
        combo.clear()
        for value, label in self.logic.listDevices(probe=probe):
            combo.addItem(label, value)
        combo.blockSignals(False)
        self._selectDevice(current)
        gpus = sum(1 for i in range(combo.count) if str(combo.itemData(i)).startswith("cuda"))
        self.ui.gpusSpinBox.setMaximum(max(1, gpus) if probe else 64)

    def _selectDevice(self, value):
        """Show ``value`` in the device menu; a device not detected here (a scene saved on
        another computer, or before Detect GPUs) gets its own entry instead of showing Automatic."""
        combo = self.ui.deviceComboBox
        value = value or "auto"
        index = combo.findData(value)
        if index < 0:
            combo.addItem(f"{value} (not detected here)", value)
            index = combo.count - 1
        combo.setCurrentIndex(index)

    def _connect(self):
        ui = self.ui
        ui.addCaseButton.connect("clicked()", self.onAddCase)
        ui.removeCaseButton.connect("clicked()", self.onRemoveCases)
        ui.trainButton.connect("clicked()", self.onTrainOrStop)
        ui.resumeButton.connect("clicked()", lambda: self.onResume())
        ui.refreshDevicesButton.connect("clicked()", lambda: self.fillDevices(probe=True))
        ui.mappingTable.connect("cellChanged(int,int)", self.onMappingEdited)
        ui.classesLineEdit.connect("editingFinished()", self.refreshMapping)
        ui.segmentNewButton.connect("clicked()", self.onSegmentNew)
        ui.addCorrectedButton.connect("clicked()", self.onAddCorrected)
        ui.fineTuneButton.connect("clicked()", self.onFineTune)
        ui.pickIntraPairButton.connect("clicked()", lambda: self.onPickPair("intra"))
        ui.pickInterPairButton.connect("clicked()", lambda: self.onPickPair("inter"))
        ui.showProxyButton.connect("clicked()", self.onShowProxy)
        for combo, edit in ((ui.currentModelsComboBox, ui.currentModelPathLineEdit),
                            (ui.initFromModelsComboBox, ui.initFromPathLineEdit)):
            combo.connect("activated(int)", lambda index, c=combo, e=edit: self.onModelPicked(c, e, index))
        for combo, name in ((ui.architectureComboBox, "training.arch"), (ui.modalityComboBox, "modality"),
                            (ui.pairModeComboBox, "training.pair_mode"), (ui.deviceComboBox, "training.device")):
            combo.connect("currentIndexChanged(int)", lambda _i, c=combo, n=name: self._setParameter(n, c.currentData))
        ui.stepsRadioButton.connect("toggled(bool)", lambda on: self._setParameter("training.use_steps", bool(on)))
        for edit, name in ((ui.outputFolderPathLineEdit, "outputFolder"), (ui.initFromPathLineEdit, "training.init_from"),
                           (ui.currentModelPathLineEdit, "currentModel"), (ui.proxyModelPathLineEdit, "proxyModel")):
            edit.connect("currentPathChanged(QString)", lambda path, n=name: self._setParameter(n, path))
        self.moduleWidget.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.moduleWidget.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

    # -- parameter node ----------------------------------------------------------------------

    def initializeParameterNode(self):
        self.setParameterNode(self.parameterClass(self.logic.getParameterNode()))

    def setParameterNode(self, parameterNode):
        if self._parameterNode and self._guiObserver is not None:
            self._parameterNode.disconnectGui(self._guiObserver)
        if self._nodeObserverTag is not None and self._parameterNode:
            self._parameterNode.parameterNode.RemoveObserver(self._nodeObserverTag)
        self._parameterNode = parameterNode
        if parameterNode:
            self._guiObserver = gui.connectParameterNode(parameterNode, self.ui)
            self._nodeObserverTag = parameterNode.parameterNode.AddObserver(
                "ModifiedEvent", lambda *args: self.updateGui())
            self._loadManualWidgets()

    @property
    def node(self):
        return self._parameterNode.parameterNode

    def _setParameter(self, name, value):
        """Set a parameter by its name (``"training.lr"``: a field of the settings pack)."""
        if self._parameterNode is not None and value is not None:
            self._parameterNode.setValue(name, value)

    def _loadManualWidgets(self):
        p = self._parameterNode
        training = p.training
        ui = self.ui
        for combo, value in ((ui.architectureComboBox, training.arch), (ui.modalityComboBox, p.modality),
                             (ui.pairModeComboBox, training.pair_mode)):
            index = combo.findData(value)
            if index >= 0:
                combo.setCurrentIndex(index)
        self._selectDevice(training.device)
        ui.stepsRadioButton.setChecked(bool(training.use_steps))
        ui.epochsRadioButton.setChecked(not training.use_steps)
        ui.outputFolderPathLineEdit.currentPath = p.outputFolder or os.path.join(os.path.expanduser("~"), "PairSeg")
        ui.initFromPathLineEdit.currentPath = training.init_from
        ui.currentModelPathLineEdit.currentPath = p.currentModel
        ui.proxyModelPathLineEdit.currentPath = p.proxyModel

    def enter(self):
        if self._parameterNode is None:
            self.initializeParameterNode()
        self.refreshModelPickers()
        self.updateGui()

    def exit(self):
        pass   # runs go on while another module is shown; the timer keeps following them

    def cleanup(self):
        self.timer.stop()
        for run in list(self.runs):
            if run.running:
                run.shutdown()  # kills the engine's whole process tree, without waiting for it
        self.runs = []
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        """The scene's nodes are about to go: stop the training (the engine saves a resumable
        checkpoint; Stop escalates to a kill), cancel the other runs, whose results would
        reference removed nodes, and detach every run from the scene's plots and nodes."""
        for run in list(self.runs):
            if getattr(run, "plots", None) is not None:
                run.plots = None          # its tables and charts go with the scene
            if not run.running:
                continue
            if run is self.trainingRun:
                run.stop(killAfter=trainingrun.STOP_KILL_SECONDS)
                run.onLog is not None and run.onLog(run, "Scene closed: training stopped (Resume continues it).")
            else:
                run.shutdown()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        # Only a module in use makes its parameter node in the new scene (Slicer's convention).
        if self.moduleWidget.parent.isEntered:
            self.initializeParameterNode()

    # -- training set ------------------------------------------------------------------------

    def items(self):
        return self.logic.trainingItems(self.node) if self._parameterNode else []

    def mapping(self):
        try:
            value = json.loads(self._parameterNode.mapping or "{}")
            return value if isinstance(value, dict) else {}
        except ValueError:
            return {}

    def classNames(self):
        text = (self._parameterNode.classNames or "").strip()
        if not text:
            return None
        return [name.strip() for name in text.split(",") if name.strip()]

    def onAddCase(self):
        volume = self.ui.volumeSelector.currentNode()
        segmentation = self.ui.segmentationSelector.currentNode()
        if volume is None:
            slicer.util.errorDisplay("Select a volume first.")
            return
        if segmentation is None:
            slicer.util.errorDisplay(f"Volume '{volume.GetName()}' has no segmentation selected: "
                                     "pick the segmentation that annotates it.")
            return
        self.logic.addToTrainingSet(self.node, volume, segmentation)
        self.updateGui()

    def onRemoveCases(self):
        selection = self.ui.trainingTable.selectionModel().selectedRows()
        self.logic.removeFromTrainingSet(self.node, {index.row() for index in selection})
        self.updateGui()

    def refreshTrainingTable(self):
        table = self.ui.trainingTable
        items = self.items()
        classNames = self.classNames()
        report = None
        try:
            report = self.logic.classReport([i for i in items if i.segmentationNode], classNames, self.mapping())
        except Exception:
            report = None
        table.setRowCount(len(items))
        for row, item in enumerate(items):
            status = "no segmentation"
            if item.segmentationNode is not None and report is not None:
                assigned = report.assignments.get(item.name, {})
                unknown = report.unknown.get(item.name, [])
                status = ", ".join(f"{s} \u2192 {c or 'ignored'}" for s, c in assigned.items())
                if unknown:
                    status += ("; " if status else "") + "UNKNOWN: " + ", ".join(unknown)
            for column, text in enumerate((item.volumeNode.GetName() if item.volumeNode else "(missing)",
                                           item.segmentationNode.GetName() if item.segmentationNode else "(none)",
                                           status)):
                cell = qt.QTableWidgetItem(text)
                cell.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
                if column == 2 and "UNKNOWN" in text:
                    cell.setForeground(qt.QBrush(qt.QColor("red")))
                table.setItem(row, column, cell)

    def refreshMapping(self):
        table = self.ui.mappingTable
        items = [i for i in self.items() if i.segmentationNode is not None]
        names = []
        for item in items:
            for name in segmentNames(item.segmentationNode):
                if name not in names:
                    names.append(name)
        classNames = self.classNames()
        mapping = self.mapping()
        from .trainingset import classesFromSegments, matchClass

        classes = classNames if classNames is not None else classesFromSegments(items, mapping)
        table.blockSignals(True)
        table.setRowCount(len(names))
        unknown = []
        for row, name in enumerate(names):
            target = matchClass(name, classes, mapping)
            nameCell = qt.QTableWidgetItem(name)
            nameCell.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
            text = "ignore" if target == IGNORE else (target or "")
            classCell = qt.QTableWidgetItem(text)
            if target is None or (target != IGNORE and classKey(target) not in {classKey(c) for c in classes}):
                unknown.append(name)
                classCell.setBackground(qt.QBrush(qt.QColor(255, 200, 200)))
            table.setItem(row, 0, nameCell)
            table.setItem(row, 1, classCell)
        table.blockSignals(False)
        self.ui.mappingStatusLabel.text = (
            ("Unknown segment names (map them to a class or 'ignore'): " + ", ".join(unknown)) if unknown
            else (f"Classes: {', '.join(classes)}" if classes else ""))

    def onMappingEdited(self, row, column):
        if column != 1:
            return
        name = self.ui.mappingTable.item(row, 0).text()
        value = self.ui.mappingTable.item(row, 1).text().strip()
        mapping = self.mapping()
        if value.lower() == "ignore":
            mapping[name] = IGNORE
        elif value:
            mapping[name] = value
        else:
            mapping.pop(name, None)
        self._parameterNode.mapping = json.dumps(mapping)
        self.updateGui()

    # -- GUI state ---------------------------------------------------------------------------

    def runningOf(self, kind):
        """The running run of ``kind`` (a class) in ``self.runs``, or None."""
        return next((run for run in self.runs if isinstance(run, kind) and run.running), None)

    def updateGui(self):
        if self._parameterNode is None:
            return
        training = self.trainingRun is not None and self.trainingRun.running
        self.ui.trainButton.text = "Stop" if training else "Train"
        self.ui.trainButton.enabled = training or bool(self.items())
        self.ui.resumeButton.enabled = (not training) and self.resumableSettings() is not None
        useSteps = bool(self._parameterNode.training.use_steps)
        self.ui.epochsSpinBox.enabled = not useSteps
        self.ui.stepsSpinBox.enabled = useSteps
        self.ui.fineTuneButton.enabled = not training and bool(self._parameterNode.currentModel) and bool(self.items())
        segmenting = self.runningOf(_segmentationRunClass()) is not None
        self.ui.segmentNewButton.enabled = not training and not segmenting and bool(self._parameterNode.currentModel)
        self.refreshTrainingTable()
        self.refreshMapping()

    def _trainingSetFolder(self, name):
        return os.path.join(self._outputFolder(), f"{name}-trainingset")

    def _outputFolder(self):
        return self._parameterNode.outputFolder or os.path.join(os.path.expanduser("~"), "PairSeg")

    def _modelName(self):
        return (self._parameterNode.outputName or "pairseg-model").strip().removesuffix(runsettings.MODEL_SUFFIX)

    def _outputModel(self, name=None):
        return os.path.join(self._outputFolder(), (name or self._modelName()) + runsettings.MODEL_SUFFIX)

    def runSettings(self, dataFolder, outputModel=None, **changes):
        """The settings of a run: a detached copy of the parameter node's ``training`` pack with
        the exported training set, the output model (default: the panel's) and ``changes``."""
        return self._parameterNode.training.copy(data=dataFolder, out=outputModel or self._outputModel(), **changes)

    # -- train / stop / resume ---------------------------------------------------------------

    def resumableSettings(self, outputModel=None):
        """The settings Resume continues (``resume`` set), or None: the last training run of this
        session when it left a checkpoint, else a checkpoint and run file that an earlier run (an
        earlier session too) left beside the output model the panel names now. With
        ``outputModel``: only a run of that model file."""
        last = self.lastTrainingRun
        if last is not None and not last.running and last.resumable and (
                outputModel is None or os.path.abspath(last.settings.out) == os.path.abspath(outputModel)):
            return last.settings.copy(resume=True, overwrite=False)
        probe = runsettings.settingsPack()(out=outputModel or self._outputModel())
        if not probe.unfinishedRun():
            return None
        try:
            return runsettings.settingsPack().fromRunFile(probe.runFile, resume=True, overwrite=False)
        except runsettings.ConfigError:
            return None

    #: the answers of ``askOutputConflict``
    NEW_VERSION, OVERWRITE, RESUME, CANCEL = "version", "overwrite", "resume", "cancel"

    def askOutputConflict(self, modelPath, conflict, versionedPath):
        """The user's choice when the output model (or an earlier run's checkpoint) exists: save as
        ``versionedPath`` (NEW_VERSION), replace (OVERWRITE, asked explicitly), continue the
        unfinished run (RESUME, offered when ``conflict["resumable"]``) or CANCEL. Testing mode (no dialog): the
        choice that loses nothing, NEW_VERSION."""
        if slicer.app.testingEnabled():
            return self.NEW_VERSION
        what = "The model file" if conflict["model"] else "An unfinished run's checkpoint of"
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle("PairSeg Trainer")
        box.setIcon(qt.QMessageBox.Question)
        box.setText(f"{what} {modelPath} exists.")
        box.setInformativeText("Save the new model under a new name, replace the existing files, "
                               + ("continue the unfinished run, " if conflict["resumable"] else "") + "or cancel.")
        buttons = {box.addButton(f"Save as {os.path.basename(versionedPath)}", qt.QMessageBox.AcceptRole): self.NEW_VERSION,
                   box.addButton("Replace", qt.QMessageBox.DestructiveRole): self.OVERWRITE}
        if conflict["resumable"]:
            buttons[box.addButton("Resume", qt.QMessageBox.ActionRole)] = self.RESUME
        buttons[box.addButton(qt.QMessageBox.Cancel)] = self.CANCEL
        box.exec_()
        return buttons.get(box.clickedButton(), self.CANCEL)

    def onTrainOrStop(self):
        run = self.trainingRun
        if run is not None and run.running:
            run.stop(killAfter=trainingrun.STOP_KILL_SECONDS)
            self.ui.statusLabel.text = "Stopping (the engine saves a resumable checkpoint)..."
            return
        try:
            name = self._modelName()
            probe = runsettings.settingsPack()(out=self._outputModel(name))
            conflict = probe.outputConflict()
            overwrite = False
            if conflict["model"] or conflict["checkpoint"]:
                versioned = runsettings.versionedModelPath(probe.out)
                choice = self.askOutputConflict(probe.out, conflict, versioned)
                if choice == self.CANCEL:
                    self.ui.statusLabel.text = "Training not started."
                    return
                if choice == self.RESUME:
                    self.onResume(self.resumableSettings(probe.out))
                    return
                if choice == self.NEW_VERSION:
                    name = os.path.basename(versioned).removesuffix(runsettings.MODEL_SUFFIX)
                    self._parameterNode.outputName = name
                    self.ui.logTextEdit.appendPlainText(f"{probe.out} exists: the new model is {versioned}.")
                overwrite = choice == self.OVERWRITE
            folder = self._trainingSetFolder(name)
            self.ui.statusLabel.text = "Exporting the training set..."
            slicer.app.processEvents()
            self.logic.exportTrainingSet(self.items(), folder, classNames=self.classNames(),
                                         mapping=self.mapping(), modality=self._parameterNode.modality)
            settings = self.runSettings(folder, self._outputModel(name), overwrite=overwrite)
            self._startRun(self.logic.startTraining(settings, modelName=name))
        except Exception as error:
            self._showError("Training could not start", error)

    def onResume(self, settings=None):
        try:
            settings = settings or self.resumableSettings()
            if settings is None:
                raise ValueError(f"nothing to resume: no checkpoint and run file of {self._outputModel()}")
            last = self.lastTrainingRun
            if last is not None and not last.running and last.settings.out == settings.out:
                run = self.logic.resumeTraining(last)       # same curves and plots
            else:                                           # a checkpoint an earlier session left
                run = self.logic.resumeTraining(settings, modelName=self._modelNameOf(settings.out))
            self._startRun(run)
        except Exception as error:
            self._showError("Training could not resume", error)

    @staticmethod
    def _modelNameOf(modelPath):
        return os.path.basename(modelPath).removesuffix(runsettings.MODEL_SUFFIX)

    def _startRun(self, run):
        self.latestRun = run
        if run not in self.runs:
            self.runs.append(run)
        if isinstance(run, trainingrun.TrainingRun):
            self.trainingRun = self.lastTrainingRun = run
        run.onLog = lambda _run, line: self.ui.logTextEdit.appendPlainText(line)
        for line in run.log:
            self.ui.logTextEdit.appendPlainText(line)
        if run is self.trainingRun:
            self.ui.progressBar.value = 0
        self.ui.statusLabel.text = f"{run.name.capitalize()} running..."
        if getattr(run, "plots", None) is not None:
            run.updatePlots(force=True)
            run.plots.show()
        self.timer.start()
        self.updateGui()

    def onTimer(self):
        """Follow every run (one runner); the training's progress goes to the status line."""
        for run in list(self.runs):
            try:
                running = run.poll()
            except Exception as error:
                running = False
                run.shutdown()
                self._showError("Error while following the engine", error)
            if not running:
                self.runs.remove(run)
                self._runEnded(run)
        if not self.runs:
            self.timer.stop()
        shown = self.trainingRun if self.trainingRun is not None and self.trainingRun.running else \
            next(iter(self.runs), None)
        if shown is not None and shown.running:
            self._showProgress(shown)
        self.updateGui()

    def _showProgress(self, run):
        self.ui.progressBar.value = int(round(100 * run.fraction))
        parts = [f"{run.name.capitalize()}: {100 * run.fraction:.0f} %"]
        if run.step is not None and run.total:
            parts.append(f"step {run.step}/{run.total}")
        if run.epoch is not None:
            parts.append(f"epoch {run.epoch}")
        if run.loss is not None:
            parts.append(f"loss {run.loss:.4f}")
        parts.append(f"ETA {trainingrun.formatDuration(run.etaSeconds)}")
        self.ui.statusLabel.text = ", ".join(parts)

    def _runEnded(self, run):
        """A run is over: its outcome to the status line, log and (training) the current model."""
        if run is self.trainingRun:
            self.trainingRun = None
            self.ui.progressBar.value = int(round(100 * run.fraction))
        if run.state == trainingrun.RunState.DONE:
            modelPath = getattr(run, "modelPath", None) if isinstance(run, trainingrun.TrainingRun) else None
            self.ui.statusLabel.text = (f"{run.name.capitalize()} finished in "
                                        f"{trainingrun.formatDuration(run.elapsedSeconds)}"
                                        + (f": {modelPath} (registered for PairSeg)" if modelPath else "."))
            if modelPath:
                if self._parameterNode is not None:
                    self._parameterNode.currentModel = modelPath
                    self.ui.currentModelPathLineEdit.currentPath = modelPath
                self.refreshModelPickers()
        elif run.state == trainingrun.RunState.CANCELLED:
            resumable = isinstance(run, trainingrun.TrainingRun) and run.resumable
            self.ui.statusLabel.text = ("Stopped. Press Resume to continue from the checkpoint." if resumable
                                        else f"{run.name.capitalize()} stopped.")
        else:
            self.ui.statusLabel.text = f"{run.name.capitalize()} failed: {run.errorMessage}"
            slicer.util.errorDisplay(f"{run.name.capitalize()} failed:\n{run.errorMessage}")

    # -- annotate then retrain ---------------------------------------------------------------

    def onSegmentNew(self):
        volume = self.ui.newVolumeSelector.currentNode()
        if volume is None:
            slicer.util.errorDisplay("Select the new volume to segment.")
            return
        if self.runningOf(_segmentationRunClass()) is not None:
            return
        try:
            run = self.logic.segmentVolume(volume, self._parameterNode.currentModel,
                                           device=self._parameterNode.training.device or "auto",
                                           onFinished=self._onSegmented)
            self._startRun(run)
        except Exception as error:
            self._showError("Segmentation could not start", error)

    def _onSegmented(self, run):
        if run.state != trainingrun.RunState.DONE or run.segmentationNode is None:
            return
        if self._parameterNode is None or run.segmentationNode.GetScene() is None:
            return   # the scene closed meanwhile (the run is cancelled then; nothing to select)
        self.ui.segmentationSelector.setCurrentNode(run.segmentationNode)
        self.ui.volumeSelector.setCurrentNode(run.volumeNode)
        self.ui.logTextEdit.appendPlainText(
            f"Created '{run.segmentationNode.GetName()}': correct it in the Segment Editor, then "
            "press 'Add corrected case to training set' (the training set keeps a copy of it as it is then).")

    def onAddCorrected(self):
        volume = self.ui.newVolumeSelector.currentNode() or self.ui.volumeSelector.currentNode()
        segmentation = self.ui.segmentationSelector.currentNode()
        if volume is None or segmentation is None:
            slicer.util.errorDisplay("Select the corrected volume and its segmentation.")
            return
        self.logic.addToTrainingSet(self.node, volume, segmentation)
        self.updateGui()

    def onFineTune(self):
        if self.trainingRun is not None and self.trainingRun.running:
            return
        try:
            baseModel = self._parameterNode.currentModel
            base = os.path.basename(baseModel).removesuffix(runsettings.MODEL_SUFFIX)
            folder = self._trainingSetFolder(base + "-finetune")
            training = self._parameterNode.training
            run = self.logic.fineTune(self.items(), baseModel, folder, mapping=self.mapping(),
                                      outputFolder=self._outputFolder(), device=training.device or "auto",
                                      batch_size=training.batch_size, sparse=training.sparse)
            self._startRun(run)
        except Exception as error:
            self._showError("Fine-tuning could not start", error)

    # -- proxy maps --------------------------------------------------------------------------

    def onPickPair(self, mode):
        ui = self.ui
        try:
            sliceA, sliceB = self.logic.pickProxyPair(
                ui.proxyVolumeASelector.currentNode(), ui.proxySegmentationASelector.currentNode(),
                ui.proxyVolumeBSelector.currentNode(), ui.proxySegmentationBSelector.currentNode(),
                mode=mode, offsets=self._parameterNode.training.offsets, seed=None,
                modality=self._parameterNode.modality, classNames=self.classNames(), mapping=self.mapping())
            self._parameterNode.proxySliceA = sliceA
            self._parameterNode.proxySliceB = sliceB
        except Exception as error:
            self._showError("Could not pick a pair", error)

    def onShowProxy(self):
        ui = self.ui
        try:
            volumeB = ui.proxyVolumeBSelector.currentNode()
            result = self.logic.proxyMaps(ui.proxyVolumeASelector.currentNode(), self._parameterNode.proxySliceA,
                                 ui.proxySegmentationASelector.currentNode(), volumeB,
                                 self._parameterNode.proxySliceB,
                                 ui.proxySegmentationBSelector.currentNode() if volumeB else None,
                                 model=self._parameterNode.proxyModel or None, classNames=self.classNames(),
                                 mapping=self.mapping())
            if result.run is not None:  # predicted maps: pairseg proxy-maps in the background
                self._startRun(result.run)
        except Exception as error:
            self._showError("Could not make the proxy maps", error)

    def _showError(self, title, error):
        self.ui.statusLabel.text = f"{title}: {error}"
        self.ui.logTextEdit.appendPlainText(f"{title}: {error}")
        if not isinstance(error, (ValueError, trainingrun.EngineError)):
            self.ui.logTextEdit.appendPlainText(traceback.format_exc())
        slicer.util.errorDisplay(f"{title}:\n{error}")


def _segmentationRunClass():
    from PairSegLib.segmentlogic import SegmentationRun

    return SegmentationRun
