import pytest
import torch

from wavexport.models import ARCHS, WaveRNN, build_model, circular_pad, resolve_config
from wavexport.models.registry import ModelConfigError


def small(arch, n_in=3, n_out=5, **kw):
    size = dict(channels=4, ring=9) if arch.startswith("wrnn") else dict(hidden=7)
    return build_model(resolve_config(arch, n_in, n_out, **{**size, **kw}))


def test_wrnn_step_equals_hand_written_recurrence():
    torch.manual_seed(1)
    m = small("wrnn", rec_init="random", enc_init="normal")
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    C, N, k = 4, 9, 3
    x, h = torch.randn(2, 3), torch.randn(2, C, N)
    w, b = m.conv.weight, m.conv.bias
    V, bV = m.encoder.weight.view(C, N, 3), m.encoder.bias.view(C, N)
    expect = torch.zeros(2, C, N)
    for bi in range(2):
        for co in range(C):
            for i in range(N):
                acc = b[co] + bV[co, i] + (V[co, i] * x[bi]).sum()
                for ci in range(C):
                    for j in range(k):
                        acc = acc + w[co, ci, j] * h[bi, ci, (i + j - k // 2) % N]
                expect[bi, co, i] = torch.relu(acc)
    y, (h1,) = m.step(x, (h,))
    torch.testing.assert_close(h1, expect, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, m.readout(expect.flatten(1)))


@pytest.mark.parametrize("kernel", [3, 5])
def test_shift_init_moves_a_pulse_one_unit_per_step_and_wraps(kernel):
    m = small("wrnn", kernel=kernel)
    C, N = 4, 9
    h = torch.zeros(1, C, N)
    h[0, :, 7] = 1.0
    zero = torch.zeros(1, 3)
    for t in range(1, 2 * N + 1):
        _, (h,) = m.step(zero, (h,))
        expect = torch.zeros(1, C, N)
        expect[0, :, (7 + t) % N] = 1.0
        assert torch.equal(h, expect), f"step {t}"


def test_identity_init_keeps_the_pulse_in_place():
    m = small("wrnn-identity")
    h = torch.zeros(1, 4, 9)
    h[0, 2, 4] = 1.0
    start = h.clone()
    for _ in range(20):
        _, (h,) = m.step(torch.zeros(1, 3), (h,))
    assert torch.equal(h, start)


def test_solo_init_writes_input_only_to_unit_zero():
    m = small("wrnn")
    u = m.encode(torch.rand(6, 3) + 0.1).view(6, 4, 9)
    assert (u[:, :, 0] > 0).all()
    assert (u[:, :, 1:] == 0).all()
    v = small("wrnn", enc_init="normal").encoder.weight
    assert v.std().item() == pytest.approx(1e-3, rel=0.2)


def test_circular_pad_wraps_both_ends():
    h = torch.arange(5.0).view(1, 1, 5)
    assert circular_pad(h, 2).flatten().tolist() == [3, 4, 0, 1, 2, 3, 4, 0, 1]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_sequence_forward_equals_chained_steps(arch):
    torch.manual_seed(0)
    m = small(arch)
    with torch.no_grad():  # leave the special inits: random weights exercise every term
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    xs = torch.randn(3, 11, 3)
    s0 = tuple(0.1 * torch.randn_like(s) for s in m.initial_state(3))
    ys, s_seq = m(xs, s0)
    state, steps = s0, []
    for t in range(11):
        y, state = m.step(xs[:, t], state)
        steps.append(y)
    torch.testing.assert_close(ys, torch.stack(steps, 1), rtol=1e-5, atol=1e-5)
    for a, b in zip(s_seq, state):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    last, _ = m(xs, s0, last_only=True)
    torch.testing.assert_close(last, ys[:, -1:], rtol=1e-5, atol=1e-5)
    assert len(state) == len(m.state_names) and state[0].shape == (3, *m.state_shape())


def test_irnn_inits():
    m = small("irnn")
    assert torch.equal(m.rnn.weight_hh_l0, torch.eye(7))
    s = small("irnn-shift")
    assert torch.equal(s.rnn.weight_hh_l0, torch.eye(7).roll(1, 0))


def test_paper_parameter_counts():
    wrnn = build_model(resolve_config("wrnn", 1, 10, channels=16, ring=256))
    irnn = build_model(resolve_config("irnn", 1, 10, hidden=256))
    assert abs(wrnn.num_parameters() - 50_000) < 1_000
    assert abs(irnn.num_parameters() - 69_000) < 1_000


def test_states_are_the_recurrence_states():
    m = small("wrnn")
    xs = torch.rand(2, 6, 3)
    hs = m.states(xs)
    _, (h,) = m(xs)
    assert hs.shape == (2, 6, 4, 9) and torch.equal(hs[:, -1], h)


def test_config_errors_are_clear():
    with pytest.raises(ModelConfigError, match="unknown arch"):
        resolve_config("nope", 1, 1)
    with pytest.raises(ModelConfigError, match="does not apply"):
        resolve_config("irnn", 1, 1, channels=3)
    with pytest.raises(ModelConfigError, match="odd"):
        build_model(resolve_config("wrnn", 1, 1, kernel=4))
    with pytest.raises(ValueError):
        WaveRNN(1, 1, rec_init="diagonal")
