"""PairSeg engine: pairwise medical image segmentation (Wang et al., MedIA 2021).

The engine imports nothing from Slicer, Qt or VTK; it runs on plain Python + PyTorch.
"""

__version__ = "0.2.0"
