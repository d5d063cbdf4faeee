"""GUI helpers shared by the PairSeg and PairSegTrainer module widgets (Qt side only)."""

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
