"""Registers the stand-in V and M (standin_models.py) in every process of a controller test."""

from wm.models import registry

registry.ENCODERS.setdefault('standin_encoder', 'standin_models:StandinEncoder')
registry.SEQUENCE_MODELS.setdefault('standin_seq', 'standin_models:StandinSeq')
