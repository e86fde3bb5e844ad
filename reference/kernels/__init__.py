"""Kernels with their plain torch twins: nearest-code lookup and decode attention.

Triton is imported lazily, only when a triton backend is used, so that
TRITON_INTERPRET=1 can still be set by then (CPU runs of the kernels).
"""
from reference.kernels.decode_attention import decode_attention
from reference.kernels.vq_lookup import vq_lookup

__all__ = ["vq_lookup", "decode_attention"]
