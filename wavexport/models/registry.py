"""Architecture names -> model class and default config: the one source of truth for the CLI, checkpoints and
exporters. A model config is a plain JSON-able dict ``{"arch": name, "n_in": .., "n_out": .., **kwargs}``."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from ..core.errors import ModelConfigError
from .base import RecurrentModel
from .rnn import GRU, IRNN, LSTM
from .wrnn import WaveRNN


@dataclass(frozen=True)
class ArchSpec:
    cls: type
    defaults: dict = field(default_factory=dict)
    about: str = ""


ARCHS: dict[str, ArchSpec] = {
    "wrnn": ArchSpec(WaveRNN, dict(rec_init="shift", enc_init="solo"),
                     "Wave-RNN: circular-conv recurrence, shift init (travelling waves), solo encoder"),
    "wrnn-identity": ArchSpec(WaveRNN, dict(rec_init="identity", enc_init="solo"),
                              "Wave-RNN ablation: identity recurrent init, no waves"),
    "wrnn-mlp": ArchSpec(WaveRNN, dict(rec_init="shift", enc_init="solo", readout="mlp"),
                         "Wave-RNN with the paper's 2-layer MLP readout"),
    "irnn": ArchSpec(IRNN, dict(rec_init="identity"), "fully connected ReLU RNN, identity init (Le et al. 2015)"),
    "irnn-shift": ArchSpec(IRNN, dict(rec_init="shift"), "iRNN with the shift-matrix (Σ) init"),
    "lstm": ArchSpec(LSTM, {}, "torch.nn.LSTM"),
    "gru": ArchSpec(GRU, {}, "torch.nn.GRU"),
}


def _accepted(cls) -> dict:
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "n_in", "n_out")}


def resolve_config(arch: str, n_in: int, n_out: int, **overrides) -> dict:
    """Full config for ``arch``: class defaults, then the arch's defaults, then non-None ``overrides``."""
    if arch not in ARCHS:
        raise ModelConfigError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")
    spec = ARCHS[arch]
    accepted = _accepted(spec.cls)
    cfg = {"arch": arch, "n_in": int(n_in), "n_out": int(n_out), **accepted, **spec.defaults}
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in accepted:
            raise ModelConfigError(f"option {k!r} does not apply to arch {arch!r} (it takes: {', '.join(accepted)})")
        cfg[k] = v
    return cfg


def build_model(config: dict) -> RecurrentModel:
    cfg = dict(config)
    arch = cfg.pop("arch", None)
    if arch not in ARCHS:
        raise ModelConfigError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")
    try:
        return ARCHS[arch].cls(**cfg)
    except (TypeError, ValueError) as e:
        raise ModelConfigError(f"bad config for {arch}: {e}") from None
