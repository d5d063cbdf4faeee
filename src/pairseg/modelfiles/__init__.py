"""Model files, one module per side of them:

- :mod:`pairseg.modelfiles.fileformat`: the ``.pairseg`` format read with the Python standard library
  alone (layout, checksum, metadata fields and their validation, migrations); the Slicer modules
  read model metadata through it without torch;
- :mod:`pairseg.modelfiles.weights`: saving and loading the network weights with torch and
  safetensors (and the resumable training checkpoints);
- :mod:`pairseg.modelfiles.catalog`: the catalog of ready models shipped with PairSeg (standard
  library only) and catalog names wherever a model path is taken.

Standard library only here: importing this package loads neither torch nor numpy.
"""
