from .base import RecurrentModel, State, make_readout
from .registry import ARCHS, ModelConfigError, build_model, resolve_config
from .rnn import GRU, IRNN, LSTM
from .wrnn import WaveRNN, circular_pad

__all__ = ["RecurrentModel", "State", "make_readout", "ARCHS", "ModelConfigError", "build_model", "resolve_config",
           "GRU", "IRNN", "LSTM", "WaveRNN", "circular_pad"]
