"""Private set intersection: which customers every party holds, without showing the others."""

from mpc.psi.align import align_by_psi
from mpc.psi.config import PsiConfig
from mpc.psi.protocol import Intersection, PsiError, intersect

__all__ = ["Intersection", "PsiConfig", "PsiError", "align_by_psi", "intersect"]
