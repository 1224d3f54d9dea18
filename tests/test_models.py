import pytest
import torch

from wavexport.models import ARCHS, WaveRNN, build_model, circular_pad, resolve_config
from wavexport.core.errors import ModelConfigError


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
    with torch.no_grad():  # scalar arithmetic: recording ~3000 autograd nodes made this loop take seconds
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


def reference_wave_states(m, xs, h0):
    """Every state of a Wave-RNN over ``xs``, in float64, from the weights alone: the ring's circular shift is
    ``torch.roll`` and the convolution an explicit sum over input channels and taps (no ``recur``, no ``circular_pad``,
    no conv1d). h_t[o, i] = relu(b[o] + sum_{c,j} W[o, c, j] h_{t-1}[c, (i + j - k//2) % N] + (V x_t + b_V)[o, i])."""
    C, N, k = m.channels, m.ring, m.kernel
    W, b = m.conv.weight.detach().double(), m.conv.bias.detach().double()
    V = m.encoder.weight.detach().double().view(C, N, -1)
    bV = m.encoder.bias.detach().double().view(C, N)
    h, hs = h0.double(), []
    for t in range(xs.shape[1]):
        # torch.roll(h, s)[..., i] = h[..., (i - s) % N]: rolling by -(j - k//2) puts h[(i + j - k//2) % N] at i
        taps = torch.stack([torch.roll(h, -(j - k // 2), dims=-1) for j in range(k)], -1)  # [B, C, N, k]
        pre = (torch.einsum("ocj,bcnj->bon", W, taps) + b[:, None]
               + torch.einsum("oni,bi->bon", V, xs[:, t].double()) + bV)
        h = torch.clamp(pre, min=0.0)
        hs.append(h)
    return torch.stack(hs, 1)


@pytest.mark.parametrize("rec_init, kernel", [(r, k) for r in ("shift", "identity", "random") for k in (1, 3, 5)
                                               if (r, k) != ("shift", 1)])  # shift needs 3 taps (refused below)
def test_states_and_forward_equal_an_independent_float64_recurrence(rec_init, kernel):
    torch.manual_seed(kernel)
    m = small("wrnn", rec_init=rec_init, kernel=kernel, enc_init="normal").double()
    with torch.no_grad():  # the recurrent kernel keeps its init; input weights and biases all matter
        m.encoder.weight.normal_()
        m.encoder.bias.normal_()
        m.conv.bias.uniform_(-0.2, 0.2)
        m.readout.weight.normal_()
        m.readout.bias.normal_()
    xs = torch.randn(2, 6, 3, dtype=torch.float64)
    h0 = torch.randn(2, 4, 9, dtype=torch.float64).relu()
    expect = reference_wave_states(m, xs, h0)
    assert expect.abs().max() > 0.1 and (expect == 0).any()  # non-trivial, and the ReLU clips somewhere
    tight = dict(rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        hs = m.states(xs, (h0,))
        ys, (h,) = m(xs, (h0,))
        last, (h_last,) = m(xs, (h0,), last_only=True)
    assert hs.shape == (2, 6, 4, 9) and hs.dtype == torch.float64
    torch.testing.assert_close(hs, expect, **tight)
    torch.testing.assert_close(h, expect[:, -1], **tight)
    torch.testing.assert_close(h_last, expect[:, -1], **tight)
    assert torch.equal(hs[:, -1], h)
    ys_expect = expect.flatten(2) @ m.readout.weight.detach().T + m.readout.bias.detach()  # the linear readout
    torch.testing.assert_close(ys, ys_expect, **tight)
    torch.testing.assert_close(last, ys_expect[:, -1:], **tight)
    state = (h0,)
    with torch.no_grad():
        for t in range(xs.shape[1]):
            y, state = m.step(xs[:, t], state)
            torch.testing.assert_close(state[0], expect[:, t], **tight)
            torch.testing.assert_close(y, ys_expect[:, t], **tight)
    # float32, default init and zero start state: the same states to float32 accuracy
    m32 = small("wrnn", rec_init=rec_init, kernel=kernel)
    xs32 = torch.rand(2, 6, 3)
    with torch.no_grad():
        hs32 = m32.states(xs32)
    torch.testing.assert_close(hs32.double(), reference_wave_states(m32, xs32, torch.zeros(2, 4, 9)),
                               rtol=1e-5, atol=1e-5)


def test_config_errors_are_clear():
    with pytest.raises(ModelConfigError, match=r"^unknown arch 'nope'; choose one of: wrnn, wrnn-identity, "):
        resolve_config("nope", 1, 1)
    with pytest.raises(ModelConfigError, match=r"^option 'channels' does not apply to arch 'irnn' \(it takes: hidden"):
        resolve_config("irnn", 1, 1, channels=3)
    with pytest.raises(ModelConfigError, match=r"^bad config for wrnn: the shift init needs a kernel of at least 3 "
                                               r"taps, got 1$"):
        build_model(resolve_config("wrnn", 1, 1, kernel=1))  # tap -1 would wrap to the only tap: an identity
    with pytest.raises(ModelConfigError, match=r"^bad config for wrnn: kernel must be odd and positive, got 4$"):
        build_model(resolve_config("wrnn", 1, 1, kernel=4))
    with pytest.raises(ModelConfigError, match=r"^bad config for wrnn: kernel \(11\) larger than the ring \(9\)$"):
        build_model(resolve_config("wrnn", 1, 1, channels=2, ring=9, kernel=11))
    # the model classes raise a plain ValueError; build_model turns it into the toolkit's ModelConfigError
    with pytest.raises(ValueError, match=r"^unknown rec_init 'diagonal' \(expected one of shift, identity, random\)$"):
        WaveRNN(1, 1, rec_init="diagonal")
    with pytest.raises(ModelConfigError, match=r"^bad config for wrnn: unknown rec_init 'diagonal'"):
        build_model(resolve_config("wrnn", 1, 1, rec_init="diagonal"))
