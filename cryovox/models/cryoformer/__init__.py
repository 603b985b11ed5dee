"""CryoFormer (Liu et al., ICLR 2024): continuous heterogeneous reconstruction with a real-space
hash-grid density field, a query-based deformation transformer and pose refinement.

:class:`CryoFormerModel` (``kind = "cryoformer"``): hash-grid encoding (:mod:`.hashgrid`), decoder
(:mod:`.decoder`), orientation encoder and pose loss (:mod:`.poses`), real-space projection
(:mod:`.render`).
"""

from cryovox.models.cryoformer.model import CryoFormerModel

__all__ = ["CryoFormerModel"]
