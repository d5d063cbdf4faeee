"""GUI helpers shared by the PairSeg and PairSegTrainer module panels (Qt side only)."""

SLICER_PARAMETER_NAME = "SlicerParameterName"


def parameterWidgets(ui):
    """{parameter name: widget} for the widgets of ``ui`` (``slicer.util.childWidgetVariables``)
    that carry a ``SlicerParameterName`` dynamic property in the .ui file."""
    widgets = {}
    for widget in vars(ui).values():
        name = widget.property(SLICER_PARAMETER_NAME) if hasattr(widget, "property") else None
        if name:
            widgets[name] = widget
    return widgets


def connectParameterNode(parameterNode, ui):
    """Bind the .ui widgets to a parameterNodeWrapper node; returns the tag for ``disconnectGui``.

    Slicer 5.6 and 5.8 ``connectGui()`` returns None (only 5.10 returns the tag), so a module that
    keeps ``connectGui``'s result can never disconnect its GUI there: the widgets stay bound to an
    old parameter node after exit, scene close or cleanup. ``connectParametersToGui`` returns the
    tag in every release.
    """
    return parameterNode.connectParametersToGui(parameterWidgets(ui))


def fillModelCombo(combo, prompt, choices):
    """Refill a model picker: ``prompt`` (item data "") first, then ``choices``
    (``models.modelChoices``: ``[(label, model file path, tool tip)]``), the path as item data."""
    import qt

    combo.clear()
    combo.addItem(prompt, "")
    for label, path, tip in choices:
        combo.addItem(label, path)
        combo.setItemData(combo.count - 1, tip, qt.Qt.ToolTipRole)


def pollTimer(intervalMs, onTimeout):
    """The Qt timer a panel polls its running engine runs with (every ``intervalMs``
    milliseconds; not started)."""
    import qt

    timer = qt.QTimer()
    timer.setInterval(intervalMs)
    timer.connect("timeout()", onTimeout)
    return timer


class PanelModuleWidget:
    """What a module widget shell does when its GUI lives in a panel object of the module's Lib
    (``PairSegLib.segmentpanel.SegmentPanel``, ``PairSegTrainerLib.widget.TrainerPanel``): mixed into a ``ScriptedLoadableModuleWidget``
    with ``VTKObservationMixin`` (listed first, so that its methods are the ones Slicer calls).
    ``loadUi(name)`` loads ``Resources/UI/<name>`` into the module panel and returns its widget
    variables (``self.ui``); ``setup()`` then sets ``self.logic`` and ``self.panel``, whose
    ``enter``/``exit``/``cleanup`` the module's are forwarded to."""

    panel = None
    logic = None
    ui = None

    def loadUi(self, name):
        import slicer

        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{name}"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        return self.ui

    def enter(self):
        if self.panel:
            self.panel.enter()

    def exit(self):
        if self.panel:
            self.panel.exit()

    def cleanup(self):
        if self.panel:
            self.panel.cleanup()
        self.removeObservers()
