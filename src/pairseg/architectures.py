"""The architecture table: every network PairSeg can train, one row each.

Standard library only (no torch, no numpy): ``pairseg.constants`` (the names the command line and
the Slicer modules list), ``pairseg.config`` (the options a training run builds a network with),
the model-file validation (``pairseg.modelfiles.fileformat``) and ``pairseg.networks`` (which
builds them) all read it, and the Slicer modules show ``label`` in their menus.

To add an architecture: one row here and one builder in ``pairseg.networks`` (a ``*_parts``
function for an encoder-decoder, or a ``PairSegModel`` wrapper class for a pairwise form).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

__all__ = ["Architecture", "ARCHITECTURE_TABLE", "architecture", "default_options"]


@dataclass(frozen=True)
class Architecture:
    """One trainable network.

    ``name``: the name in commands, settings and model files; ``label``: how a GUI shows it;
    ``training_form``: "single" (an encoder-decoder, also a ``base`` of the pairwise forms),
    "proxy" (C2FCN: trained on the proxy targets of pairs), "conjugate" (CFCN: a fusion net over
    f(x, y) and f(y, x)) or "siamese" (SiamFCN); ``options``: the network's own options with their
    defaults (a pairwise form also takes its ``base``'s options); ``choices``: the allowed values of
    the options that have a fixed set (a ``base`` is any "single" row); ``readout``: how a
    segmentation is read out of the network (a sentence, for the documentation);
    ``legacy_options``: the values of options a model file written before the option existed was
    read with (model-file migration).
    """

    name: str
    label: str
    training_form: str
    options: Mapping[str, Any]
    readout: str
    choices: Mapping[str, tuple] = field(default_factory=dict)
    legacy_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def pairwise(self) -> bool:
        """Whether the network takes image pairs (every form but "single")."""
        return self.training_form != "single"


_BASE = {"base": "deeplabv3plus"}

#: The rows, in the order the command line and the Trainer list them (first: the default).
ARCHITECTURE_TABLE: tuple[Architecture, ...] = (
    Architecture("c2fcn", "C2FCN (compact conjugate FCN)", "proxy",
                 {**_BASE, "aggregate": "sum", "readout": "union"},
                 "from f(x, x) (reflexivity, paper Eq. 12): the AND or XOR channels (readout 'union') or the "
                 "AND channels alone (readout 'and')",
                 {"aggregate": ("sum", "max"), "readout": ("union", "and")},
                 {"readout": "and"}),
    Architecture("cfcn", "CFCN (conjugate FCN)", "conjugate", dict(_BASE),
                 "the class probabilities of one conjugate branch (encoder, decoder, head; the fusion net unused)"),
    Architecture("deeplabv3plus", "DeepLabv3+ (single-slice baseline)", "single", {"output_stride": 8},
                 "the class probabilities of the network", {"output_stride": (8, 16)}),
    Architecture("unet", "U-Net (single-slice baseline)", "single", {"width": 64},
                 "the class probabilities of the network"),
    Architecture("siamfcn", "SiamFCN (Siamese ablation)", "siamese", dict(_BASE),
                 "the class probabilities of one branch whose partner is the same image"),
)

_BY_NAME = {row.name: row for row in ARCHITECTURE_TABLE}


def architecture(name: str) -> Optional[Architecture]:
    """The row of ``name``, or None when no architecture has that name."""
    return _BY_NAME.get(name)


def default_options(name: str) -> dict:
    """Every option of architecture ``name`` with its default, a pairwise form's base's included
    (what ``pairseg.networks.build_model`` fills in). KeyError: unknown name."""
    row = _BY_NAME[name]
    if not row.pairwise:
        return dict(row.options)
    return {**row.options, **_BY_NAME[row.options["base"]].options}
