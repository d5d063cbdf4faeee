"""Reading and writing volumes and label maps with their geometry, one module per concern.

- :mod:`pairseg.io.volume`: the ``Volume`` record (array + spacing, origin, direction), geometry rules
- :mod:`pairseg.io.read`: ``read_volume``, ``read_label``, ``read_label_volume`` (every format)
- :mod:`pairseg.io.write`: ``write_labels``, ``write_volume``, ``write_probabilities``, ``write_text``,
  ``write_png`` (each through :mod:`pairseg.atomic`, the one write path)
- :mod:`pairseg.io.locations`: input-folder and output-location checks made before any work
- per format: :mod:`pairseg.io.nifti` (header checks), :mod:`pairseg.io.nrrd_mha` (NRRD/MetaImage
  data checks), :mod:`pairseg.io.dicom` (series folders), :mod:`pairseg.io.segmentation` (.seg.nrrd)
- :mod:`pairseg.io.problems`: the wording of "truncated or corrupt" input errors

The file suffixes each reader and writer accepts are :mod:`pairseg.constants`'s.
"""
