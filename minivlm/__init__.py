"""minivlm: a minimal, from-scratch, educational PyTorch reference of five vision-language models.

The compiled kernels live in `minivlm.ops`; their naive math, which a student reads first, in
`minivlm.reference`. The models live in `minivlm.models`, one file per architecture;
`minivlm.from_pretrained` loads one from a local checkpoint folder.
"""

from . import ops, reference
from .loading import from_pretrained
from .ops import attention, causal_mask, reference_enabled, rope, use_reference

__version__ = "0.1.0"

__all__ = ["ops", "reference", "attention", "rope", "causal_mask", "use_reference", "reference_enabled",
           "from_pretrained"]
