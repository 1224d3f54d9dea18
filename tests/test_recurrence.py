"""The fast training recurrences (wavexport.models.recurrence) against autograd through the plain per-step loop."""
import sys
import types

import pytest
import torch

from wavexport.models import WaveRNN, build_model, recurrence, resolve_config, triton_rnn
from wavexport.models.recurrence import plain_recurrence


def wave(seed=0, n_in=3, n_out=4, channels=3, ring=7, kernel=3, dtype=torch.float64, **kw):
    """A small Wave-RNN with every weight moved away from its (sparse, structured) initialisation; the recurrent
    kernel scaled to an operator norm <= 0.97 (the sum of its taps' norms bounds it): long runs cannot explode."""
    torch.manual_seed(seed)
    m = WaveRNN(n_in, n_out, channels=channels, ring=ring, kernel=kernel, **kw).to(dtype)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name != "conv.weight":
                p.add_(0.1 * torch.randn_like(p))
        w = m.conv.weight
        w.mul_(0.6).add_(torch.randn_like(w) * (0.4 / (channels * kernel) ** 0.5))
        w.mul_(0.97 / max(0.97, sum(torch.linalg.matrix_norm(w[:, :, j], 2) for j in range(kernel))))
        m.conv.bias.sub_(0.05)
    return m


def irnn(seed=0, n_in=3, n_out=4, hidden=9, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    m = build_model(resolve_config("irnn", n_in, n_out, hidden=hidden, **kw)).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
        w = m.rnn.weight_hh_l0
        w.mul_(0.97 / max(0.97, torch.linalg.matrix_norm(w, 2)))  # relu is 1-Lipschitz: no explosion
    return m


def run(model, xs, h0=None, last_only=False, with_state_loss=True):
    """Outputs, final state and every gradient (parameters, and xs/h0 when they require it) of one backward."""
    model.zero_grad(set_to_none=True)
    for t in (xs, h0):
        if t is not None:
            t.grad = None
    ys, (h,) = model(xs, None if h0 is None else (h0,), last_only=last_only)
    loss = (ys.sin() * torch.linspace(0.5, 1.5, ys.shape[-1], dtype=ys.dtype)).sum()
    if with_state_loss:
        loss = loss + (h * h).sum()
    loss.backward()
    out = {"ys": ys.detach(), "h": h.detach()}
    out.update({name: p.grad.clone() for name, p in model.named_parameters()})
    for name, t in (("xs", xs), ("h0", h0)):
        if t is not None and t.requires_grad:
            out[name] = t.grad.clone()
    return out


def rel_errors(fast, plain):
    assert fast.keys() == plain.keys()
    errs = {}
    for k in plain:
        scale = plain[k].abs().max().item()
        diff = (fast[k] - plain[k]).abs().max().item()
        errs[k] = diff / scale if scale > 0 else diff * float("inf")  # all zeros (a gradient died): must match
    return errs


def both(model, *args, **kw):
    fast = run(model, *args, **kw)
    with plain_recurrence():
        plain = run(model, *args, **kw)
    return fast, plain


WAVE_CASES = [
    pytest.param(dict(rec_init="shift"), True, id="shift-last"),
    pytest.param(dict(rec_init="shift"), False, id="shift-every"),
    pytest.param(dict(rec_init="identity", readout="mlp"), True, id="identity-mlp-last"),
    pytest.param(dict(rec_init="random", readout="mlp"), False, id="random-mlp-every"),
    pytest.param(dict(rec_init="random", kernel=5, ring=11), False, id="k5"),
    pytest.param(dict(rec_init="random", kernel=1), True, id="k1"),
    pytest.param(dict(rec_init="random", activation="tanh"), False, id="tanh"),
    pytest.param(dict(rec_init="random", activation="identity", enc_init="normal"), False, id="identity-act"),
    # 19 channels: the recurrent kernel's gradient in two column blocks (recurrence._dw_blocks)
    pytest.param(dict(rec_init="random", channels=19, ring=5), True, id="c19-blocks"),
    # one and two inputs: the encoder as broadcast multiply-adds (three or more: a batched product)
    pytest.param(dict(rec_init="random", n_in=1), True, id="one-input"),
    pytest.param(dict(rec_init="shift", n_in=2), False, id="two-inputs"),
]


@pytest.mark.parametrize("kw,last_only", WAVE_CASES)
def test_wave_gradients_equal_the_plain_loop_float64(kw, last_only):
    m = wave(**kw)
    if kw.get("activation") == "identity":
        with torch.no_grad():
            m.conv.weight.mul_(0.5)  # linear dynamics: keep them contracting
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(3, 300, kw.get("n_in", 3), generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.rand(3, m.channels, m.ring, generator=g, dtype=torch.float64, requires_grad=True)
    fast, plain = both(m, xs, h0, last_only=last_only)
    errs = rel_errors(fast, plain)
    assert max(errs.values()) < 1e-12, errs


@pytest.mark.parametrize("rec_init", ["identity", "shift", "random"])
@pytest.mark.parametrize("last_only", [True, False], ids=["last", "every"])
def test_irnn_gradients_equal_the_plain_loop_float64(rec_init, last_only):
    m = irnn(rec_init=rec_init)
    g = torch.Generator().manual_seed(2)
    xs = torch.randn(3, 300, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.rand(3, 9, generator=g, dtype=torch.float64, requires_grad=True)
    fast, plain = both(m, xs, h0, last_only=last_only)
    errs = rel_errors(fast, plain)
    assert max(errs.values()) < 1e-12, errs


def test_parameters_only_and_unused_final_state():
    """What training does: no gradient for the input or the initial state; the copy task's loss reads every step
    and not the final state (the final-state gradient is None), adding's reads only the final step."""
    for model in (wave(rec_init="shift"), irnn()):
        xs = torch.randn(2, 40, 3, dtype=torch.float64)
        for last_only in (True, False):
            fast, plain = both(model, xs, last_only=last_only, with_state_loss=False)
            assert "xs" not in fast and "h0" not in fast
            assert max(rel_errors(fast, plain).values()) < 1e-10


@pytest.mark.parametrize("arch", ["wrnn", "irnn"])
def test_float32_agrees_within_1e_5(arch):
    if arch == "wrnn":
        m = wave(channels=16, ring=32, dtype=torch.float32, rec_init="shift")
    else:
        m = irnn(hidden=64, dtype=torch.float32)
    xs = torch.randn(8, 120, 3)
    fast, plain = both(m, xs, last_only=False)
    errs = rel_errors(fast, plain)
    assert max(errs.values()) < 1e-5, errs


def test_weight_gradient_column_blocks():
    assert recurrence._dw_blocks(27) == [(0, 24), (24, 27)]
    assert recurrence._dw_blocks(19) == [(0, 16), (16, 19)]
    for c in (6, 13, 16, 24, 32):
        assert recurrence._dw_blocks(c) == [(0, c)]


def test_single_sample_single_step():
    for m in (wave(), irnn()):
        xs = torch.randn(1, 1, 3, dtype=torch.float64, requires_grad=True)
        fast, plain = both(m, xs, last_only=True)
        assert max(rel_errors(fast, plain).values()) < 1e-12


def test_an_empty_batch_gives_what_the_plain_loop_gives():
    """A rank's share of a last batch smaller than the world can be empty (test_distributed)."""
    for m in (wave(), wave(channels=19, ring=5, n_in=2), irnn()):
        n_in = m.encoder.in_features if hasattr(m, "encoder") else 3
        xs = torch.randn(0, 12, n_in, dtype=torch.float64, requires_grad=True)
        fast, plain = both(m, xs, last_only=True)
        assert fast.keys() == plain.keys()
        for k in fast:
            assert fast[k].shape == plain[k].shape and torch.equal(fast[k], plain[k]), k


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_no_inputs_gives_what_the_plain_loop_gives():
    m = wave(n_in=0)
    xs = torch.randn(3, 20, 0, dtype=torch.float64)
    fast, plain = both(m, xs, last_only=False)
    assert fast.keys() == plain.keys() and fast["encoder.weight"].numel() == 0
    for k in fast:
        assert torch.allclose(fast[k], plain[k], rtol=1e-12, atol=1e-12), k


def test_deterministic_bit_for_bit():
    m = wave(channels=8, ring=20, dtype=torch.float32)
    xs = torch.randn(4, 60, 3)
    a, b = run(m, xs), run(m, xs)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_relu_mask_is_torchs_convention_at_exact_zero():
    """A unit whose pre-activation is exactly 0 passes no gradient, as in torch's relu backward (grad * (out > 0))."""
    m = wave(dtype=torch.float32)
    with torch.no_grad():
        m.conv.weight.zero_()
        m.conv.bias.zero_()
        m.encoder.bias.zero_()
        m.encoder.weight.zero_()
        m.encoder.weight[::2] = 1.0  # half the units get sum(x) > 0, the other half exactly 0
    xs = torch.ones(2, 5, 3)
    fast, plain = both(m, xs, last_only=False)
    assert torch.equal(fast["h"], plain["h"]) and (fast["h"].flatten(1)[:, 1::2] == 0).all()
    for grads in (fast, plain):
        assert (grads["encoder.weight"][1::2] == 0).all() and (grads["encoder.bias"][1::2] == 0).all()
        assert (grads["encoder.weight"][::2] != 0).all()
    assert max(rel_errors(fast, plain).values()) < 1e-6


def test_no_grad_forward_and_states_match_the_plain_loop():
    m = wave(channels=4, ring=9, dtype=torch.float32)
    xs = torch.randn(3, 50, 3)
    with torch.no_grad():
        for last_only in (True, False):
            ys, (h,) = m(xs, last_only=last_only)
            with plain_recurrence():
                ys_p, (h_p,) = m(xs, last_only=last_only)
            torch.testing.assert_close(ys, ys_p, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(h, h_p, rtol=1e-5, atol=1e-6)
        states = m.states(xs)
        with plain_recurrence():
            torch.testing.assert_close(states, m.states(xs), rtol=1e-5, atol=1e-6)
    r = irnn(dtype=torch.float32)
    with torch.no_grad():  # the iRNN keeps nn.RNN's kernel without gradients
        ys, _ = r(xs)
        with plain_recurrence():
            assert torch.equal(ys, r(xs)[0])


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_tracing_records_the_plain_ops():
    """A TorchScript trace (like an ONNX export or torch.compile) must see the plain ops, not the custom node."""
    m = wave(dtype=torch.float32).eval()
    xs = torch.randn(2, 4, 3)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)[0]

    assert recurrence.use_fast()
    with torch.no_grad():
        traced = torch.jit.trace(Wrap(), xs, check_trace=False)
        graph = str(traced.inlined_graph)
        torch.testing.assert_close(traced(xs), m(xs)[0], rtol=1e-5, atol=1e-6)
    assert "aten::_convolution" in graph and "_WaveSequence" not in graph


def test_plain_recurrence_switch_restores(monkeypatch):
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert not recurrence.use_fast()
    monkeypatch.undo()
    assert recurrence.fast_enabled()
    with plain_recurrence():
        assert not recurrence.fast_enabled() and not recurrence.use_fast()
        with plain_recurrence():
            pass
        assert not recurrence.fast_enabled()
    assert recurrence.fast_enabled()


def saved_bytes(model, xs, last_only):
    """Bytes of the distinct storages autograd saves for one forward (what the graph keeps until backward)."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(xs, last_only=last_only)
    return sum(storages.values())


def test_saves_no_more_than_the_plain_loop():
    recurrence.release_workspace()  # else the state buffer may be a larger one kept from an earlier test
    m = wave(channels=8, ring=64, dtype=torch.float32)
    xs = torch.randn(16, 50, 3)
    for last_only in (True, False):
        fast = saved_bytes(m, xs, last_only)
        with plain_recurrence():
            plain = saved_bytes(m, xs, last_only)
        assert fast <= (0.55 if last_only else 0.7) * plain, (fast, plain)
    r = irnn(hidden=64, dtype=torch.float32)
    fast = saved_bytes(r, xs, True)
    with plain_recurrence():
        plain = saved_bytes(r, xs, True)
    assert fast <= plain, (fast, plain)


def test_state_buffer_is_reused_only_when_free():
    recurrence.release_workspace()
    m = wave(channels=4, ring=9, dtype=torch.float32)
    xs = torch.randn(3, 30, 3)
    run(m, xs)
    first = recurrence._workspace[torch.float32].data_ptr()
    run(m, xs)
    assert recurrence._workspace[torch.float32].data_ptr() == first  # the first graph is gone: reused
    # Two graphs alive at once: the second forward must not write over the first's saved states.
    m.zero_grad()
    ys1, _ = m(xs)
    ys2, _ = m(2 * xs)
    assert recurrence._workspace[torch.float32].data_ptr() != first
    (ys1.sum() + ys2.sum()).backward()
    fast = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    with plain_recurrence():
        (m(xs)[0].sum() + m(2 * xs)[0].sum()).backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(fast[n], p.grad, rtol=1e-5, atol=1e-6)
    recurrence.release_workspace()
    assert not recurrence._workspace


def test_no_state_buffer_reuse_without_the_use_count(monkeypatch):
    monkeypatch.setattr(recurrence, "_storage_use_count", None)
    recurrence.release_workspace()
    m = wave(channels=4, ring=9, dtype=torch.float32)
    fast, plain = both(m, torch.randn(3, 30, 3))
    assert not recurrence._workspace and max(rel_errors(fast, plain).values()) < 1e-5


def test_small_products_run_on_one_thread(monkeypatch):
    calls = []
    real = torch.set_num_threads

    def record(n):
        calls.append(n)
        real(n)

    monkeypatch.setattr(torch, "set_num_threads", record)
    before = torch.get_num_threads()
    real(2)
    try:
        m = wave(dtype=torch.float32)
        xs = torch.randn(2, 10, 3)
        run(m, xs)
        assert calls == [1, 2, 1, 2]  # forward loop, backward loop
        calls.clear()
        monkeypatch.setattr(recurrence, "_PARALLEL_MIN_FLOP", 0)
        run(m, xs)
        run(irnn(dtype=torch.float32), xs)
        assert calls == [] and torch.get_num_threads() == 2
    finally:
        real(before)


# --- the CUDA dispatch: the Triton kernels' glue, run on the CPU with the kernels' torch reference --------------
def fake_kernels(calls=None):
    """triton_rnn's launchers as the glue calls them, computed by its torch reference (float64, any device)."""
    def forward(x, h0, W, bias, encoder, keep_all=True):
        U = torch.nn.functional.linear(x, *encoder).view(*x.shape[:2], *h0.shape[1:])
        H = triton_rnn.reference_forward(U, h0, W, bias)
        return H if keep_all else H[:, -1]

    def backward(G, H, h0, W, g_last=None, weight_grads=False):
        if calls is not None:
            calls.append((G is not None, g_last is not None))
        full = torch.zeros_like(H) if G is None else G.clone()
        if g_last is not None:
            full[:, -1] += g_last
        dU, dh0 = triton_rnn.reference_backward(full, H, h0, W)
        dW, _ = triton_rnn.conv_param_grads(dU, H, h0, W.shape[-1])
        return dU, dh0, dW, dU.sum((0, 1))

    return types.SimpleNamespace(wrnn_sequence_forward=forward, wrnn_sequence_backward=backward,
                                 gpu_verified=triton_rnn.gpu_verified)


@pytest.mark.parametrize("last_only", [True, False], ids=["last", "every"])
def test_kernel_path_gradients_equal_the_plain_loop(monkeypatch, last_only):
    calls = []
    monkeypatch.setattr(recurrence, "_kernel_module", lambda x: fake_kernels(calls))
    m = wave(rec_init="random", readout="mlp")
    xs = torch.randn(2, 60, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.rand(2, 3, 7, dtype=torch.float64, requires_grad=True)
    fast, plain = both(m, xs, h0, last_only=last_only)
    assert max(rel_errors(fast, plain).values()) < 1e-10
    # (G of every state?, gradient of the final state?): the loss reads the final state, and reads every state only
    # without last_only; reading only the final state builds no [B, T, C, N] gradient for the others.
    assert calls == [(not last_only, True)]


def test_kernel_path_without_gradients_keeps_two_states(monkeypatch):
    """Evaluation (no gradient, last state only) asks the kernels for the final state, not every state."""
    asked = []
    fake = fake_kernels()
    forward = fake.wrnn_sequence_forward
    fake.wrnn_sequence_forward = lambda *a, keep_all=True, **k: asked.append(keep_all) or forward(*a, keep_all=keep_all,
                                                                                                   **k)
    monkeypatch.setattr(recurrence, "_kernel_module", lambda x: fake)
    m = wave(rec_init="random")
    xs = torch.randn(2, 9, 3, dtype=torch.float64)
    with torch.no_grad():
        got, _ = m(xs, last_only=True)
        with recurrence.plain_recurrence():
            want, _ = m(xs, last_only=True)
        every = m.states(xs)
    assert asked == [False, True] and every.shape == (2, 9, 3, 7)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_kernel_module_only_for_float32_cuda_tensors(monkeypatch):
    monkeypatch.delenv("WAVEXPORT_TRITON", raising=False)
    had_triton = "triton" in sys.modules
    assert recurrence._kernel_module(torch.zeros(1)) is None
    assert ("triton" in sys.modules) == had_triton
    cuda_like = types.SimpleNamespace(is_cuda=True, dtype=torch.float32)
    monkeypatch.setattr(triton_rnn, "available", lambda x: True)
    assert recurrence._kernel_module(cuda_like) is triton_rnn
    monkeypatch.setenv("WAVEXPORT_TRITON", "0")  # the user's switch back to the torch-op recurrence
    assert recurrence._kernel_module(cuda_like) is None
    monkeypatch.delenv("WAVEXPORT_TRITON")
    monkeypatch.setattr(triton_rnn, "available", lambda x: False)
    assert recurrence._kernel_module(cuda_like) is None
    assert recurrence._kernel_module(types.SimpleNamespace(is_cuda=True, dtype=torch.float64)) is None


def test_cuda_routes_to_kernels_plain_loop_or_cudnn(monkeypatch):
    """On CUDA the fast path is taken only through the Triton kernels (ReLU, float32); otherwise the Wave-RNN runs the
    plain loop and the iRNN cuDNN (measured faster on a GPU than the torch-op recurrence: docs/PERFORMANCE.md)."""
    monkeypatch.delenv("WAVEXPORT_TRITON", raising=False)
    cpu = torch.zeros(1)
    assert recurrence.wave_fast(cpu, "tanh", 27, 100, 3) and recurrence.wave_fast(cpu, "relu", 16, 256, 3)
    assert recurrence.irnn_fast(cpu)
    cuda = types.SimpleNamespace(device=torch.device("cuda"), is_cuda=True, dtype=torch.float32)
    assert not recurrence.irnn_fast(cuda)
    monkeypatch.setattr(triton_rnn, "available", lambda x: True)
    assert recurrence.wave_fast(cuda, "relu", 16, 256, 3) and not recurrence.wave_fast(cuda, "tanh", 16, 256, 3)
    assert recurrence.wave_fast(cuda, "relu", 6, 100, 5)  # the rank-1 loop: verified on a GPU at every tested k
    # tl.dot shapes not yet verified on a GPU (triton_rnn.gpu_verified): the plain loop
    assert not recurrence.wave_fast(cuda, "relu", 27, 100, 3) and not recurrence.wave_fast(cuda, "relu", 16, 256, 5)
    assert not recurrence.wave_fast(cuda, "relu", 16, 512, 3)  # the ring in two chunks
    monkeypatch.setenv("WAVEXPORT_TRITON", "0")
    assert not recurrence.wave_fast(cuda, "relu", 16, 256, 3)
    monkeypatch.delenv("WAVEXPORT_TRITON")
    monkeypatch.setattr(triton_rnn, "available", lambda x: False)
    assert not recurrence.wave_fast(cuda, "relu", 16, 256, 3)


@pytest.mark.slow
def test_train_speed_benchmark_runs(capsys):
    """benchmarks/train_speed.py end to end on its smallest preset, memory subprocesses included."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_speed.py"
    spec = importlib.util.spec_from_file_location("train_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--presets", "copy80-wrnn", "--reps", "1", "--memory-preset", "copy80-wrnn",
                       "--devices", "cpu", "--json", "--profile", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    (r,) = report["results"]
    assert "Self CPU" in r["profile"] and "_WaveSequence" in r["profile"]
    assert r["preset"] == "copy80-wrnn" and r["old"]["wall_s"] > 0 and r["new"]["wall_s"] > 0
    assert 0 < r["new"]["fraction_of_peak"] < 1.5 and report["peak_gflops"]["cpu"] > 0
    assert report["memory"]["new"]["peak_rss_mb"] > 0 and report["memory"]["old"]["iteration_mb"] > 0
    assert "| copy80-wrnn | cpu |" in bench.table(report) and "peak RSS" in bench.table(report)
    del report["memory"]
    assert "peak RSS" not in bench.table(report)
    with pytest.raises(SystemExit):
        bench.main(["--presets", "nope"])
    assert torch.get_num_threads() == 1


def test_train_speed_against_a_git_revision(capsys):
    """--against REV times REV's fast recurrence beside the working tree's, swapped in and restored."""
    import importlib.util
    import json
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    spec = importlib.util.spec_from_file_location("train_speed", root / "benchmarks" / "train_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    original = recurrence.wave_sequence
    with bench.recurrence_at("HEAD")():
        swapped = recurrence.wave_sequence
    assert swapped is not original and swapped.__module__ == "wavexport.models._recurrence_rev"
    assert recurrence.wave_sequence is original
    assert bench.main(["--presets", "copy80-wrnn", "--reps", "1", "--devices", "cpu", "--json", "--no-memory",
                       "--against", "HEAD"]) == 0
    report = json.loads(capsys.readouterr().out)
    (r,) = report["results"]
    assert r["rev"]["cpu_s"] > 0 and r["ratio_rev_cpu"] > 0 and report["against"] == "HEAD"
    assert "| HEAD s/it (cpu) |" in bench.table(report)
    with pytest.raises(SystemExit, match="--against no-such-rev"):
        bench.main(["--presets", "copy80-wrnn", "--against", "no-such-rev"])


def test_thread_scaling_benchmark_runs(capsys):
    """benchmarks/thread_scaling.py end to end on the cheapest preset; both thread counts timed, the ratio theirs."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    path_before = list(sys.path)
    sys.path.insert(0, str(root))
    try:
        spec = importlib.util.spec_from_file_location("thread_scaling", root / "thread_scaling.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        n = torch.get_num_threads()
        try:
            assert bench.main(["--presets", "adding100-irnn", "--reps", "1", "--json"]) == 0
        finally:
            torch.set_num_threads(n)
    finally:
        sys.path[:] = path_before  # the benchmark puts its folder on the path too
    (r,) = json.loads(capsys.readouterr().out)["results"]
    assert r["preset"] == "adding100-irnn" and r["threads"] == 2 and 0 < r["one_s"] < 60 and 0 < r["many_s"] < 60
    with pytest.raises(SystemExit):
        bench.main(["--threads", "1"])
