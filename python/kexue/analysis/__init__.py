"""Small numeric tools named in the posts (MODELS.md I1, I3, E6): the volume of a non-square
matrix, the spinning-rope curve, and unargmaxable classes of a softmax layer."""
from kexue.analysis.jump_rope import JumpRopeCurve, jump_rope_curve, plot_jump_rope, taut_rope_sine
from kexue.analysis.unargmaxable import ArgmaxabilityResult, reference_argmaxable, unargmaxable
from kexue.analysis.volume import log_volume, reference_volume, volume

__all__ = [
    "ArgmaxabilityResult",
    "JumpRopeCurve",
    "jump_rope_curve",
    "log_volume",
    "plot_jump_rope",
    "reference_argmaxable",
    "reference_volume",
    "taut_rope_sine",
    "unargmaxable",
    "volume",
]
