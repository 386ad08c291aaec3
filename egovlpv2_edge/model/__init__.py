"""The EgoVLPv2 model (torch)."""

from egovlpv2_edge.model.egovlpv2 import EgoVLPv2, FusionOutput, create_model

__all__ = ["EgoVLPv2", "FusionOutput", "create_model"]
