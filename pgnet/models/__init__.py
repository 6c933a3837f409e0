"""PGNet modules: backbones, the CMGM, the decoder and the full network."""

from pgnet.models.cmgm import CMGM
from pgnet.models.pgnet import ModelConfig, PGNet, PGNetOutput, count_parameters, create_model

__all__ = ["CMGM", "ModelConfig", "PGNet", "PGNetOutput", "count_parameters", "create_model"]
