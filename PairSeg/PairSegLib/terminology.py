"""Standard terminology (SNOMED CT codes) for the organs PairSeg models segment.

Segments carry a Slicer terminology entry so that DICOM-SEG export writes coded segment types.
Entry format (Slicer >= 5.x): ``context~category~type~typeModifier~anatomicContext~region~regionModifier``
with each code written ``scheme^value^meaning``.
"""

from . import engine

CATEGORY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
RIGHT = ("SCT", "24028007", "Right")
LEFT = ("SCT", "7771000", "Left")

#: organ key -> SNOMED CT type code
ORGAN_CODES = {
    "liver": ("SCT", "10200004", "Liver"),
    "kidney": ("SCT", "64033007", "Kidney"),
    "spleen": ("SCT", "78961009", "Spleen"),
    "pancreas": ("SCT", "15776009", "Pancreas"),
    "gallbladder": ("SCT", "28231008", "Gallbladder"),
    "stomach": ("SCT", "69695003", "Stomach"),
}


def _code(code):
    return "^".join(code) if code else "^^"


def normalizedClassName(name):
    """'Kidney_R', 'right-kidney', 'Right Kidney' -> (side or None, organ words): the engine's one
    class-name rule (``pairseg.constants.class_key``: case, ``_``, ``-`` and spaces ignored), then
    the side words ("right"/"r"/"rt", "left"/"l"/"lt") taken out."""
    tokens = engine.torchFreeEngineModule("constants").class_key(str(name)).split()
    side = None
    rest = []
    for token in tokens:
        if token in ("right", "r", "rt"):
            side = "right"
        elif token in ("left", "l", "lt"):
            side = "left"
        else:
            rest.append(token)
    return side, " ".join(rest)


def terminologyCodes(className):
    """(type code, modifier code or None) for a class name, or None when the organ is unknown."""
    side, organ = normalizedClassName(className)
    organ = {"kidneys": "kidney", "gall bladder": "gallbladder"}.get(organ, organ)
    if organ not in ORGAN_CODES:
        return None
    modifier = {"right": RIGHT, "left": LEFT}.get(side) if organ == "kidney" else None
    return ORGAN_CODES[organ], modifier


def terminologyEntry(className):
    """Slicer terminology entry string for a class name, or None when the organ is unknown."""
    codes = terminologyCodes(className)
    if codes is None:
        return None
    typeCode, modifier = codes
    return "~".join([CATEGORY_CONTEXT, _code(ANATOMICAL_STRUCTURE), _code(typeCode), _code(modifier),
                     ANATOMIC_CONTEXT, "^^", "^^"])


def setSegmentTerminology(segment, className):
    """Attach the terminology entry of ``className`` to a vtkSegment (no-op for unknown organs)."""
    entry = terminologyEntry(className)
    if entry is None:
        return False
    if hasattr(segment, "SetTerminology"):
        segment.SetTerminology(entry)
    else:  # Slicer before 5.8 stores the entry as a tag
        segment.SetTag("TerminologyEntry", entry)
    return True
