"""Fast training recurrences: the Wave-RNN and the iRNN over a whole sequence as one autograd node each.

Why: autograd through the per-step loop records a conv1d (or addmm), a cat, an add and a ReLU per timestep and
replays them one by one backwards, each weight gradient a small product of its own (and for the Wave-RNN's
encoder, a pathological [C*N, B*T] x [B*T, n_in] product: 0.7 s of a 2 s adding iteration). Here the forward loops
over time with no tape and keeps only the states; the backward loops in reverse, carrying only the state gradient
through the transposed recurrence and the activation's mask. The math is the model's own (``WaveRNN.recur``,
``IRNN.advance``); ``tests/test_recurrence.py`` holds both to autograd through the plain loop in float64.

The Wave-RNN's ring convolution as GEMMs: the state is kept channel-major with the ring's circular padding stored,
``[C, B, N+2p]`` (p = k//2), and the saved sequence is ``[T+1, C, B, N+2p]`` (each step's state one contiguous
block: measured 1-3% faster than ``[C, T+1, B, N+2p]``, whose rows of one step lie a whole sequence apart).
Flattened per channel to ``[C, B*(N+2p)]``, tap j of the convolution is one ``[C, C] @ [C, L]`` product whose right
operand is the flat state shifted by j columns, a plain strided matrix: the 2p columns that straddle two batch rows
compute garbage that lands on padding, rewritten after each step. The transposed convolution of the backward is the
same three products on the gradient (kept zero on its padding), its padding folded back onto the units it copies.
Measured on this project's 2-core AMD EPYC (one thread): these products run at ~2x the oneDNN conv1d of the plain
loop; one [3C, C] product with shifted sums, an im2col copy with one K=3C product, or a batched product over ring
positions were all slower. The step's encoded input (plus both biases) is written into its state slot first and the
taps' products accumulate onto it, so no separate add pass reads a transposed encoder output (with the split below:
psMNIST 1.15x, adding 1.12-1.21x, side by side in benchmarks/train_speed.py --against). The per-step views of the
saved sequence are made once per call (``unbind``), not in the loop.

Gradients of the recurrent kernel, the biases and the encoder are accumulated per step from the step's gradient,
which is still in cache (in two column blocks for a ragged channel count: ``_dw_blocks``), rather than stored for
one product over all steps: measured equal for the adding and psMNIST models and 20% faster for copy (which the
store-then-multiply variant spent zeroing and re-reading a gradient buffer), and the backward then needs no
sequence-sized buffer of its own. The iRNN is the other way round:
its [H, B*T] x [B*T, H] weight gradient is one product after the loop (per-step products measured slower).

The saved Wave-RNN state buffer (1.6 GB for psMNIST) is kept between iterations on the CPU and reused when nothing
references it any more: a freshly mapped buffer costs a page fault per 4 KB on first touch, measured as 10-25% of
the forward here. ``release_workspace()`` drops it.

``plain_recurrence()`` switches the fast path off (the parity tests and ``benchmarks/train_speed.py`` compare the
two). On CUDA the Wave-RNN (ReLU, float32, a shape whose kernels passed their tests on a GPU) runs the Triton kernels
of ``triton_rnn`` when Triton is installed, its encoder fused in; otherwise (or with WAVEXPORT_TRITON=0) CUDA runs
the plain loop, and the iRNN always runs cuDNN there: measured faster than these torch ops on a GPU (``wave_fast``,
``irnn_fast``). Triton is never imported for CPU tensors.
"""
from __future__ import annotations

import contextlib
import os
import threading

import torch

__all__ = ["plain_recurrence", "fast_enabled", "use_fast", "grad_needed", "release_workspace", "wave_sequence",
           "irnn_sequence", "wave_fast", "irnn_fast", "kernels_allowed"]

_FAST = True
# Per-step products smaller than this run on one thread even when torch has more: on the 2-core machine they measured
# no faster on two threads, and up to 100x slower whenever the other core was busy (OpenMP waits for a thread that
# is not scheduled). The Wave-RNN paper models' products (17-19 MFLOP) keep the caller's thread count.
_PARALLEL_MIN_FLOP = 8e6
_workspace: dict = {}
_workspace_lock = threading.Lock()
_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)  # private: without it, no reuse


@contextlib.contextmanager
def plain_recurrence():
    """Inside this block ``model(xs)`` runs the eager per-step loop (autograd records every op): the reference."""
    global _FAST
    previous, _FAST = _FAST, False
    try:
        yield
    finally:
        _FAST = previous


def fast_enabled() -> bool:
    return _FAST


def use_fast() -> bool:
    """Whether a model's forward takes the fast path: on unless ``plain_recurrence()`` is active or an ONNX export,
    a TorchScript trace or torch.compile is recording ops (those need the plain ops, not a custom node)."""
    if not _FAST or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    return not (torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())


def grad_needed(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def release_workspace() -> None:
    """Drop the state buffer kept for reuse between training iterations."""
    _workspace.clear()


def _saved_buffer(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of ``shape``; on the CPU, the previous call's storage when nothing else holds it."""
    if like.device.type != "cpu" or _storage_use_count is None:
        return like.new_empty(shape)
    numel = 1
    for d in shape:
        numel *= d
    with _workspace_lock:  # the check and the taking (the view below references the storage) as one
        buf = _workspace.get(like.dtype)
        # Two references when free: the cache's tensor and the temporary storage object of this call.
        if buf is None or buf.numel() < numel or _storage_use_count(buf.untyped_storage()._cdata) > 2:
            buf = _workspace[like.dtype] = like.new_empty(numel)
        return buf[:numel].view(shape)


@contextlib.contextmanager
def _threads_for(flop_per_product: float):
    """One thread for a loop of products too small to share (see ``_PARALLEL_MIN_FLOP``), else the caller's."""
    n = torch.get_num_threads()
    if n == 1 or flop_per_product >= _PARALLEL_MIN_FLOP:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _dw_blocks(C: int) -> list[tuple[int, int]]:
    """Column blocks of the per-step recurrent-kernel gradient [C, L] @ [L, C]: more than 16 channels, not a multiple
    of 8, split at the last multiple of 8. MKL's kernel for that product handles a ragged width badly; measured on
    this project's CPU (one thread, L = 13,056): 1.19x for the adding model's 27 channels, 1.05-1.6x for most widths
    from 13 to 59, 0.94-0.97x at 20 and 42, slower below 13 (not split)."""
    m = C - C % 8
    return [(0, m), (m, C)] if C > 16 and m < C else [(0, C)]


def _act_forward(name: str):
    return {"relu": torch.Tensor.relu_, "tanh": torch.Tensor.tanh_, "identity": None}[name]


def _act_backward(name: str, grad: torch.Tensor, out: torch.Tensor, dest: torch.Tensor) -> None:
    """dest = grad * act'(pre), from the activation's output ``out``, by torch's own backward formulas.

    ReLU: torch's relu backward is ``threshold_backward(grad, result, 0)``, i.e. grad * (out > 0), so the mask from
    the stored output H > 0 is exactly the plain loop's: a unit whose pre-activation is exactly 0 passes no gradient
    (relu'(0) taken as 0). tanh: ``tanh_backward(grad, result)`` = grad * (1 - out^2)."""
    if name == "relu":
        torch.ops.aten.threshold_backward.grad_input(grad, out, 0, grad_input=dest)
    elif name == "tanh":
        torch.ops.aten.tanh_backward.grad_input(grad, out, grad_input=dest)
    else:
        dest.copy_(grad)


def _wrap(state: torch.Tensor, N: int, p: int) -> None:
    """Write the circular padding of padded states [..., N+2p] from their interior."""
    if p:
        state[..., :p].copy_(state[..., N:N + p])
        state[..., N + p:].copy_(state[..., p:2 * p])


def _fold(grad: torch.Tensor, N: int, p: int) -> None:
    """Add the gradient of a padded state's padding [..., N+2p] onto the interior units it copies."""
    if p:
        grad[..., p:2 * p].add_(grad[..., N + p:])
        grad[..., N:N + p].add_(grad[..., :p])


class _WaveSequence(torch.autograd.Function):
    """The Wave-RNN over a sequence on torch ops (any device, any float dtype), its encoder fused in.

    Inputs xs [B, T, n_in], h0 [B, C, N], enc_w [C*N, n_in], enc_b [C*N], W [C, C, k], bias [C]. Outputs the final
    state [B, C, N] and, with ``keep_all``, every state [B, T, C, N] (a view of the saved states; else an empty
    tensor). With ``store`` False (no gradient wanted) two states are kept instead of all.

    Saved for the backward: the padded states ``[T+1, C, B, N+2p]``, one float per unit and step (+2p/N padding),
    where the plain loop's graph saves at least two (the padded conv input and the ReLU output), plus the inputs."""

    @staticmethod
    def forward(ctx, xs, h0, enc_w, enc_b, W, bias, activation: str, keep_all: bool, store: bool):
        B, T, n_in = xs.shape
        C, _, k = W.shape
        N = h0.shape[-1]
        p = k // 2
        R = N + 2 * p
        S, L = B * R, max(B * R - 2 * p, 0)  # an empty batch (a rank's share of a short last batch): no columns
        slots = T + 1 if store else 2
        Hs = _saved_buffer((slots, C, B, R), xs) if store else xs.new_empty(slots, C, B, R)
        Hs[0, :, :, p:p + N] = h0.transpose(0, 1)
        _wrap(Hs[0], N, p)
        # Encoder and conv bias per channel on the padded ring, zero on the padding: u_t[c] = x_t @ venc[c] + benc[c],
        # written straight into the step's state slot [C, B, N+2p], onto which the taps' products then accumulate.
        venc = xs.new_zeros(C, n_in, R)
        venc[:, :, p:p + N] = enc_w.view(C, N, n_in).transpose(1, 2)
        benc = xs.new_zeros(C, 1, R)
        benc[:, 0, p:p + N] = enc_b.view(C, N) + bias[:, None]
        taps = W.permute(2, 0, 1).contiguous().unbind(0)  # taps[j] = W[:, :, j], [C_out, C_in]
        act = _act_forward(activation)
        # The encoder's product: K = n_in. One or two inputs (psMNIST, adding) as broadcast multiply-adds, measured
        # 1.4-2x faster than a batched product into the strided slot; more inputs as that product.
        if n_in in (1, 2):
            xe = xs.permute(1, 2, 0)[:, :, None, :, None].unbind(0)  # per step [n_in, 1, B, 1]
            ve = venc.unsqueeze(2).unbind(1)  # [C, 1, R] per input
        else:
            xe = xs.transpose(0, 1).unsqueeze(1).expand(T, C, B, n_in).unbind(0)
        cur = Hs.unbind(0)  # slot views [C, B, R]
        # Per slot, the flat state [C, S] shifted by j columns: what tap j reads, and (j = p) the columns a step
        # writes, which straddle batch rows: the products' garbage lands on padding, rewritten by _wrap.
        shifted = [Hs.as_strided((slots, C, L), (C * S, S, 1), Hs.storage_offset() + j).unbind(0) for j in range(k)]
        with _threads_for(2 * C * C * L):
            for t in range(T):
                a, b = (t, t + 1) if store else (t % 2, (t + 1) % 2)
                if n_in in (1, 2):
                    torch.addcmul(benc, xe[t][0], ve[0], out=cur[b])
                    if n_in == 2:
                        cur[b].addcmul_(xe[t][1], ve[1])
                else:
                    torch.baddbmm(benc, xe[t], venc, out=cur[b])
                out = shifted[p][b]
                for j in range(k):
                    out.addmm_(taps[j], shifted[j][a])
                if act is not None:
                    act(cur[b])
                _wrap(cur[b], N, p)
        last = Hs[T if store else T % 2, :, :, p:p + N].transpose(0, 1).contiguous()
        every = Hs[1:, :, :, p:p + N].permute(2, 0, 1, 3) if keep_all else xs.new_empty(0)
        if store:
            ctx.save_for_backward(xs, enc_w, W, Hs)
            ctx.activation = activation
            ctx.set_materialize_grads(False)
        return last, every

    @staticmethod
    def backward(ctx, g_last, g_all):
        xs, enc_w, W, Hs = ctx.saved_tensors
        B, T, n_in = xs.shape
        _, C, _, R = Hs.shape
        k = W.shape[-1]
        p = k // 2
        N = R - 2 * p
        S = B * R
        L = max(S - 2 * p, 0)
        need_x, need_h0 = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if g_all is not None and g_all.numel() == 0:
            g_all = None
        tapsT = W.permute(2, 1, 0).contiguous().unbind(0)  # tapsT[j] = W[:, :, j].T, [C_in, C_out]
        gpad = xs.new_zeros(C, B, R)  # gradient of the step's pre-activation; its padding stays 0
        g = gpad.view(C, S)
        g_int = gpad[:, :, p:p + N]
        dpad = xs.new_zeros(C, B, R)  # gradient w.r.t. the padded state of the previous step
        dflat = dpad.view(C, S)
        d_int = dpad[:, :, p:p + N]
        outs = Hs[1:, :, :, p:p + N].unbind(0)  # the activation's output of step t
        dW = xs.new_zeros(k, C, C)
        # dW_j += g h_shifted^T: output column q read input column q - p + j, i.e. the saved state of slot t (h_{t-1},
        # the input of step t) shifted by j, transposed: [L, C_in] per step, in the column blocks of _dw_blocks.
        dw_terms = []
        for j in range(k):
            for c0, c1 in _dw_blocks(C):
                hT = Hs.as_strided((T, L, c1 - c0), (C * S, 1, S), Hs.storage_offset() + c0 * S + j).unbind(0)
                dw_terms.append((dW[j][:, c0:c1], hT))
        g_mid = g[:, p:S - p]
        # The transposed convolution: dpad[:, r] = sum_j W_j^T g[:, r + p - j], g zero on its padding.
        dconv = [(dflat, tapsT[p], g)]
        for j in range(k):
            s = p - j
            if s > 0:
                dconv.append((dflat[:, :S - s], tapsT[j], g[:, s:]))
            elif s < 0:
                dconv.append((dflat[:, -s:], tapsT[j], g[:, :S + s]))
        # sum over steps of [x_t, 1]^T g_t per channel: the encoder weight's gradient and, last row, its bias's.
        denc = xs.new_zeros(C, n_in + 1, R)
        xa = torch.cat([xs, xs.new_ones(B, T, 1)], 2).transpose(0, 1).transpose(1, 2)  # [T, n_in + 1, B]
        xa = xa.unsqueeze(1).expand(T, C, n_in + 1, B).unbind(0)
        if need_x:
            dx = xs.new_empty(T, B, n_in)
            vpad = xs.new_zeros(C, R, n_in)
            vpad[:, p:p + N] = enc_w.view(C, N, n_in)
        if g_last is not None:
            d_int.copy_(g_last.transpose(0, 1))
        if g_all is not None:
            d_int.add_(g_all[:, T - 1].transpose(0, 1))
        with _threads_for(2 * C * C * L):
            for t in range(T - 1, -1, -1):
                _act_backward(ctx.activation, d_int, outs[t], g_int)
                for dest, hT in dw_terms:
                    dest.addmm_(g_mid, hT[t])
                denc.baddbmm_(xa[t], gpad)
                if need_x:
                    dx[t] = torch.matmul(gpad, vpad).sum(0)
                if t > 0 or need_h0:
                    dest, tap, src = dconv[0]
                    torch.mm(tap, src, out=dest)
                    for dest, tap, src in dconv[1:]:
                        dest.addmm_(tap, src)
                    _fold(dpad, N, p)
                    if g_all is not None and t > 0:
                        d_int.add_(g_all[:, t - 1].transpose(0, 1))
        d_enc_w = denc[:, :n_in, p:p + N].permute(0, 2, 1).reshape(C * N, n_in)
        d_enc_b = denc[:, n_in, p:p + N].reshape(C * N)
        d_bias = d_enc_b.view(C, N).sum(1)
        grad_x = dx.transpose(0, 1) if need_x else None
        grad_h0 = d_int.transpose(0, 1).contiguous() if need_h0 else None
        return grad_x, grad_h0, d_enc_w, d_enc_b, dW.permute(1, 2, 0), d_bias, None, None, None


def kernels_allowed() -> bool:
    """False when the environment sets WAVEXPORT_TRITON=0: CUDA then runs the plain loop (a way around a Triton that
    misbehaves on some GPU)."""
    return os.environ.get("WAVEXPORT_TRITON", "1").strip() != "0"


def wave_fast(xs: torch.Tensor, activation: str, channels: int, ring: int, kernel: int) -> bool:
    """Whether the Wave-RNN's fast recurrence pays on ``xs``'s device: always on the CPU; on CUDA only through the
    Triton kernels (ReLU, float32, a shape verified on a GPU: ``triton_rnn.gpu_verified``). Measured on an
    H200 (2026-11-26, psMNIST 16x256, batch 128): these torch ops on the GPU took 0.257 s an iteration, the plain
    loop 0.197 s (both launch-bound), so without the kernels CUDA runs the plain loop."""
    if xs.device.type == "cpu":
        return True
    return _kernels_for(xs, activation, channels, ring, kernel) is not None


def irnn_fast(xs: torch.Tensor) -> bool:
    """Whether the iRNN's fast recurrence pays: on the CPU only. On CUDA nn.RNN's cuDNN kernel with autograd is ~9x
    faster than a per-step loop (H200, psMNIST iRNN-256: 4.6 ms vs 40.7 ms an iteration)."""
    return xs.device.type == "cpu"


def _kernels_for(xs: torch.Tensor, activation: str, channels: int, ring: int, kernel: int):
    """The kernel module for a Wave-RNN on ``xs`` (see ``_kernel_module``) when its kernels apply: ReLU, and a shape
    whose kernels have passed their tests on a GPU (``triton_rnn.gpu_verified``); else None."""
    if activation != "relu":
        return None
    kernels = _kernel_module(xs)
    return kernels if kernels is not None and kernels.gpu_verified(channels, ring, kernel) else None


def _kernel_module(x: torch.Tensor):
    """``triton_rnn`` when its kernels can run on ``x`` (a float32 CUDA tensor, Triton installed, not switched off
    by WAVEXPORT_TRITON=0), else None. Never imports triton for CPU tensors."""
    if not (x.is_cuda and x.dtype == torch.float32) or not kernels_allowed():
        return None
    from . import triton_rnn

    return triton_rnn if triton_rnn.available(x) else None


class _WaveKernelSequence(torch.autograd.Function):
    """The ReLU Wave-RNN through the fused kernels of ``triton_rnn``, its encoder fused in: xs [B, T, n_in], h0,
    enc_w, enc_b, W, bias -> (final state [B, C, N], every state [B, T, C, N] with ``keep_all``, else empty).

    The forward kernel encodes each input row itself (no [B, T, C, N] tensor of encoded inputs) and, with no gradient
    wanted and no states asked for, keeps two state rows instead of T. The backward kernel gives dU (= every d_t) and
    dh0; ``wrnn_sequence_backward`` adds dW (torch products over all timesteps, or accumulated in the kernel where
    enabled: ``triton_rnn.FUSE_WEIGHT_GRADS``) and the per-unit sum of d_t (the biases' gradients); the encoder
    weight's gradient is one product dU^T xs. A model that reads only the final state sends only its gradient: no
    sequence-sized zero gradient is built for the states it never read."""

    @staticmethod
    def forward(ctx, xs, h0, enc_w, enc_b, W, bias, keep_all: bool, store: bool, kernels):
        if not (store or keep_all):
            last = kernels.wrnn_sequence_forward(xs, h0, W, bias, encoder=(enc_w, enc_b), keep_all=False)
            return last, xs.new_empty(0)
        H = kernels.wrnn_sequence_forward(xs, h0, W, bias, encoder=(enc_w, enc_b))
        if store:
            ctx.save_for_backward(xs, h0, enc_w, W, H)
            ctx.kernels = kernels
            ctx.set_materialize_grads(False)
        return H[:, -1].clone(), (H if keep_all else xs.new_empty(0))

    @staticmethod
    def backward(ctx, g_last, g_all):
        xs, h0, enc_w, W, H = ctx.saved_tensors
        B, T, n_in = xs.shape
        C, N = H.shape[2], H.shape[3]
        if g_all is not None and g_all.numel() == 0:
            g_all = None
        dU, dh0, dW, ds = ctx.kernels.wrnn_sequence_backward(g_all, H, h0, W, g_last=g_last, weight_grads=True)
        flat = dU.view(B * T, C * N)
        d_enc_w = flat.t() @ xs.reshape(B * T, n_in) if ctx.needs_input_grad[2] else None
        dx = (flat @ enc_w).view(B, T, n_in) if ctx.needs_input_grad[0] else None
        return dx, dh0, d_enc_w, ds.reshape(C * N), dW, ds.sum(1), None, None, None


def wave_sequence(xs: torch.Tensor, h0: torch.Tensor, enc_w: torch.Tensor, enc_b: torch.Tensor, W: torch.Tensor,
                  bias: torch.Tensor, activation: str, keep_all: bool):
    """(final state [B, C, N], every state [B, T, C, N] or None) of the Wave-RNN, as one autograd node."""
    store = grad_needed(xs, h0, enc_w, enc_b, W, bias)
    kernels = _kernels_for(xs, activation, W.shape[0], h0.shape[-1], W.shape[-1])
    if kernels is not None:
        last, every = _WaveKernelSequence.apply(xs, h0, enc_w, enc_b, W, bias, keep_all, store, kernels)
        return last, (every if keep_all else None)
    last, every = _WaveSequence.apply(xs, h0, enc_w, enc_b, W, bias, activation, keep_all, store or keep_all)
    return last, (every if keep_all else None)


class _IRNNSequence(torch.autograd.Function):
    """The iRNN h_t = relu(W_ih x_t + b_ih + b_hh + W_hh h_{t-1}) over a sequence: one product per step forward and
    one backward; the weights' and biases' gradients are one product each over all timesteps, after the loop.
    Saved: the states [T+1, B, H] (the plain loop saves them too) and the inputs."""

    @staticmethod
    def forward(ctx, xs, h0, w_ih, b_ih, b_hh, w_hh, keep_all: bool):
        B, T, n_in = xs.shape
        H = w_hh.shape[0]
        Hs = xs.new_empty(T + 1, B, H)
        Hs[0] = h0
        xT = xs.transpose(0, 1).reshape(T * B, n_in)
        torch.addmm(b_ih + b_hh, xT, w_ih.t(), out=Hs[1:].view(T * B, H))  # every input projection at once
        wt = w_hh.t()
        hs = Hs.unbind(0)
        with _threads_for(2 * B * H * H):
            for t in range(T):
                hs[t + 1].addmm_(hs[t], wt).relu_()
        ctx.save_for_backward(xT, w_ih, w_hh, Hs)
        ctx.set_materialize_grads(False)
        return Hs[T].clone(), (Hs[1:].transpose(0, 1) if keep_all else xs.new_empty(0))

    @staticmethod
    def backward(ctx, g_last, g_all):
        xT, w_ih, w_hh, Hs = ctx.saved_tensors
        T1, B, H = Hs.shape
        T = T1 - 1
        need_x, need_h0 = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if g_all is not None and g_all.numel() == 0:
            g_all = None
        G = Hs.new_empty(T, B, H)
        d = Hs.new_zeros(B, H)
        if g_last is not None:
            d.copy_(g_last)
        if g_all is not None:
            d.add_(g_all[:, T - 1])
        hs, gs = Hs.unbind(0), G.unbind(0)
        g_steps = g_all.unbind(1) if g_all is not None else None
        with _threads_for(2 * B * H * H):
            for t in range(T - 1, -1, -1):
                torch.ops.aten.threshold_backward.grad_input(d, hs[t + 1], 0, grad_input=gs[t])
                if t > 0 or need_h0:
                    torch.mm(gs[t], w_hh, out=d)
                    if g_steps is not None and t > 0:
                        d.add_(g_steps[t - 1])
        Gf = G.view(T * B, H)
        d_w_hh = Gf.t() @ Hs[:T].view(T * B, H)
        d_w_ih = (xT.t() @ Gf).t()  # not Gf.t() @ xT: MKL is 2-35x slower with the n_in-wide output last
        db = Gf.sum(0)
        grad_x = (Gf @ w_ih).view(T, B, w_ih.shape[1]).transpose(0, 1) if need_x else None
        return grad_x, (d if need_h0 else None), d_w_ih, db, db.clone(), d_w_hh, None


def irnn_sequence(xs, h0, w_ih, b_ih, b_hh, w_hh, keep_all: bool):
    """(final state [B, H], every state [B, T, H] or None) of the iRNN, as one autograd node."""
    last, every = _IRNNSequence.apply(xs, h0, w_ih, b_ih, b_hh, w_hh, keep_all)
    return last, (every if keep_all else None)
