"""How much arithmetic a model does per timestep, from its resolved config alone: what the thread rule, the
training benchmark and the results tables (FLOPs to solve) count. 2 FLOPs per multiply-add of the products and
convolutions, elementwise ops left out (torch's FlopCounterMode convention; tests/test_reproduce.py holds the
two equal)."""
from __future__ import annotations


def forward_flops_per_step(model_config: dict) -> tuple[int, int]:
    """(recurrence incl. the input projection, readout) FLOPs of one sample's timestep.
    wRNN: 2·(C·k·C·N + n_in·C·N); iRNN/LSTM/GRU: 2·g·H·(H + n_in) with g = 1, 4, 3; readout 2·units·n_out
    (the MLP readout: through its hidden layer)."""
    n_in, n_out = int(model_config.get("n_in", 1)), int(model_config.get("n_out", 1))
    if "channels" in model_config:
        c = int(model_config["channels"])
        units = c * int(model_config.get("ring", 1))
        rec = 2 * (c * int(model_config.get("kernel", 3)) * units + n_in * units)
    else:
        units = int(model_config.get("hidden", 1))
        gates = {"lstm": 4, "gru": 3}.get(str(model_config.get("arch", "")).split("-")[0], 1)
        rec = 2 * gates * units * (units + n_in)
    if model_config.get("readout") == "mlp":
        hidden = int(model_config.get("readout_hidden", 100))
        read = 2 * (units * hidden + hidden * n_out)
    else:
        read = 2 * units * n_out
    return rec, read


def step_flops(model_config: dict) -> int:
    """FLOPs of one sample's full timestep: recurrence and readout."""
    return sum(forward_flops_per_step(model_config))


def flops_per_iteration(model_config: dict, seq_len: int, read_steps: int, batch: int) -> float:
    """Training FLOPs of one iteration: the forward over ``seq_len`` steps (readout on ``read_steps`` of them) and
    a backward counted as twice the forward (the usual estimate)."""
    rec, read = forward_flops_per_step(model_config)
    return 3.0 * batch * (seq_len * rec + read_steps * read)
