"""Live training curves in Slicer plot nodes: loss per step and validation Dice per epoch.

Two tables (``vtkMRMLTableNode``) hold the numbers; two charts (``vtkMRMLPlotChartNode``) show
them: "PairSeg training loss" and "PairSeg validation Dice" (mean and one series per class).
``update(curves)`` rewrites the tables from a ``trainingrun.Curves`` object; it is cheap enough for a
once-per-second timer. In the application ``show()`` puts the loss chart into the plot view.
"""

from __future__ import annotations

import numpy as np

LOSS_CHART = "PairSeg training loss"
DICE_CHART = "PairSeg validation Dice"
SERIES_COLORS = ((0.2, 0.2, 0.2), (0.90, 0.10, 0.29), (0.24, 0.71, 0.29), (0.26, 0.39, 0.85),
                 (0.96, 0.51, 0.19), (0.57, 0.12, 0.71), (0.27, 0.94, 0.94), (0.94, 0.20, 0.90))


def _floatColumn(name: str, values):
    import vtk

    column = vtk.vtkDoubleArray()
    column.SetName(name)
    column.SetNumberOfTuples(len(values))
    for index, value in enumerate(values):
        column.SetValue(index, float(value))
    return column


class TrainingPlots:
    """The tables, series and charts of one training run (nodes created on first use)."""

    def __init__(self, scene, prefix: str = "PairSeg"):
        self.scene = scene
        self.prefix = prefix
        self.lossTable = None
        self.diceTable = None
        self.lossChart = None
        self.diceChart = None
        self.series = {}

    def _table(self, name):
        table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", self.scene.GenerateUniqueName(name))
        return table

    def _chart(self, title, xTitle, yTitle):
        chart = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", self.scene.GenerateUniqueName(title))
        chart.SetTitle(title)
        chart.SetXAxisTitle(xTitle)
        chart.SetYAxisTitle(yTitle)
        chart.SetLegendVisibility(True)
        return chart

    def _seriesFor(self, key, chart, table, xColumn, yColumn, color):
        series = self.series.get(key)
        if series is None:
            series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode",
                                                  self.scene.GenerateUniqueName(f"{self.prefix} {yColumn}"))
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName(xColumn)
            series.SetYColumnName(yColumn)
            series.SetPlotType(series.PlotTypeScatter)
            series.SetMarkerStyle(series.MarkerStyleNone if key == "loss" else series.MarkerStyleCircle)
            series.SetColor(*color)
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
            self.series[key] = series
        return series

    def inScene(self) -> bool:
        """Whether the nodes (once made) are all still in the scene (a scene close removes them)."""
        nodes = list(self.series.values()) + [self.lossTable, self.diceTable, self.lossChart, self.diceChart]
        return all(node.GetScene() is self.scene for node in nodes if node is not None)

    def update(self, curves) -> None:
        """Rewrite the tables from ``curves`` (a trainingrun.Curves) and add any new series. Nodes that
        were removed from the scene are never written into: the set is made anew."""
        import vtk

        if not self.inScene():
            self.series = {}
            self.lossTable = self.diceTable = self.lossChart = self.diceChart = None
        if self.lossTable is None:
            self.lossTable = self._table(f"{self.prefix} loss table")
            self.diceTable = self._table(f"{self.prefix} Dice table")
            self.lossChart = self._chart(LOSS_CHART, "step", "training loss")
            self.diceChart = self._chart(DICE_CHART, "epoch", "Dice")
            # A fixed Dice axis: the range only applies with automatic range off.
            self.diceChart.SetYAxisRangeAuto(False)
            self.diceChart.SetYAxisRange(0.0, 1.0)
        lossTable = vtk.vtkTable()
        lossTable.AddColumn(_floatColumn("step", curves.lossSteps))
        lossTable.AddColumn(_floatColumn("loss", curves.lossValues))
        self.lossTable.SetAndObserveTable(lossTable)
        diceTable = vtk.vtkTable()
        diceTable.AddColumn(_floatColumn("epoch", curves.valEpochs))
        diceTable.AddColumn(_floatColumn("mean Dice", curves.meanDice))
        for name, values in curves.classDice.items():
            diceTable.AddColumn(_floatColumn(name, values))
        self.diceTable.SetAndObserveTable(diceTable)
        self._seriesFor("loss", self.lossChart, self.lossTable, "step", "loss", SERIES_COLORS[0])
        self._seriesFor("mean Dice", self.diceChart, self.diceTable, "epoch", "mean Dice", SERIES_COLORS[0])
        for index, name in enumerate(curves.classDice):
            self._seriesFor("dice:" + name, self.diceChart, self.diceTable, "epoch", name,
                            SERIES_COLORS[1 + index % (len(SERIES_COLORS) - 1)])

    def lossArrays(self):
        """(steps, losses) as numpy arrays, read back from the table node (tests, scripts)."""
        table = self.lossTable.GetTable()
        return tuple(np.array([table.GetColumnByName(n).GetValue(i) for i in range(table.GetNumberOfRows())])
                     for n in ("step", "loss"))

    def show(self, chart=None) -> None:
        """Show a chart in the application's plot view (no-op headless)."""
        import slicer

        chart = chart or self.lossChart
        logic = None
        try:
            logic = slicer.modules.plots.logic()
        except AttributeError:
            return
        if logic is not None and chart is not None:
            logic.ShowChartInLayout(chart)

    def removeNodes(self) -> None:
        for node in list(self.series.values()) + [self.lossTable, self.diceTable, self.lossChart, self.diceChart]:
            if node is not None and node.GetScene() is not None:
                self.scene.RemoveNode(node)
        self.series = {}
        self.lossTable = self.diceTable = self.lossChart = self.diceChart = None
