"""Custom operators of HRSAM: each has a pure-torch reference and fast kernels.

Importing this package registers the ``hrsam::`` operators with ``torch.library`` so that
models trace and export with the irregular operations as single nodes.
"""

from hrsam.ops.backend import available_backends, use_backend
from hrsam.ops.selective_scan import selective_scan
from hrsam.ops.varlen_attention import varlen_attention

__all__ = ["available_backends", "selective_scan", "use_backend", "varlen_attention"]
