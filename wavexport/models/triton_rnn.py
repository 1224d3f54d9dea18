"""Fused Triton kernels for the Wave-RNN training recurrence, plus the torch reference they are tested against.

The recurrence (float32), state h [B, C, N] (C channels, each a ring of N units), per step t = 1..T:

    pre_t = conv(h_{t-1}) + u_t,   h_t = relu(pre_t)
    conv(h)[b, o, n] = bias[o] + sum_i sum_j W[o, i, j] * h[b, i, (n + j - k//2) mod N]

with u_t = U[:, t] (already encoded) or, with ``encoder=``, x_t @ V^T + b computed in the kernel from the model's
input x [B, T, D] (the encoder fused: no [B, T, C, N] tensor of encoded inputs is written and read back).
``wrnn_sequence_forward`` returns every h_t (or, ``keep_all=False``, the final one, from two rows of scratch);
``wrnn_sequence_backward`` runs the reverse recurrence (d_t = g * (H_t > 0), g <- G_{t-1} + convT(d_t)) from the
gradient of every state G and/or of the final state alone, and returns dU (= every d_t) and dh0; with
``weight_grads`` also dW (from ``conv_param_grads``, torch products over all timesteps, or accumulated in the
backward kernel: ``fuse``, off by default until timed on a GPU) and the per-unit sum of d_t (the biases' gradients).

Design
------
* One launch per direction runs the whole time loop; the grid is one program per batch sample, nothing is launched
  per step.  The time loop is sequential inside the program.
* Triton has no circular shift of a register tile (no portable roll/gather across older releases), so the shifted
  operand of each step is re-read from global memory with wrapped indices: the forward reads h_{t-1} from the row
  H[b, t-1] it has just written (h0 for the first step), the backward reads d_{t+1} from dU[b, t+1].  These outputs
  are needed anyway, so there is no extra scratch buffer and no extra HBM traffic: the row was written by the same
  program a moment ago (16 KB per psMNIST sample) and is read back from L1/L2.  ``tl.debug_barrier()`` (bar.sync,
  which orders global memory within the CTA) separates the store of step t from the shifted loads of step t+1, and
  the kernels are launched with ``num_stages=1`` so that the software pipeliner cannot hoist the next step's loads
  above that store.  The state itself (the [C, BLOCK_N] tile being computed) lives in registers.
* Per step the conv is, per tap j, a [C, C] @ [C, BLOCK_N] product against the shifted rows.  With C >= 16
  (``use_dot``) it is ``tl.dot`` with C padded to a power of two >= 16 (tl.dot's minimum), ``input_precision``
  "tf32x3" by default (three TF32 tensor-core products, fp32's accuracy; plain "tf32", Triton's default on
  Ampere/Hopper, would miss a 1e-5 tolerance; "ieee" is FMA-only); otherwise an
  explicit loop over input channels and taps of rank-1 updates.  C and N are padded to powers of two with masks; N is
  processed in chunks of BLOCK_N columns (a static loop) to bound register pressure.
* The backward is the same kernel shape with the transposed weight (Wt[i, o, j] = W[o, i, j]) and the opposite shift:
  convT(d)[i, m] = sum_o sum_j W[o, i, j] * d[o, (m - j + k//2) mod N].  The ReLU mask is torch's: H_t > 0.

Triton is imported on first need and the kernels are jitted on first use, once per value of TRITON_INTERPRET (the
decorator picks compiler or interpreter when it runs), so this module imports without Triton and the mode is whatever
TRITON_INTERPRET says at the first kernel call.  The kernels use no ``@jit`` helper of triton.language (``tl.zeros`` is
one; ``tl.full`` is used instead): those are decorated when triton.language is imported, which would tie them to the
mode of that moment.  Under TRITON_INTERPRET=1 the kernels run on CPU tensors (slowly); that is how the tests check
them without a GPU.  The interpreter runs programs one after another and ignores ``num_stages`` and the barrier, so
the barrier's placement is correct by construction and must be confirmed on a GPU (the tests run unchanged there).

Measured on an H200 (Triton 3.6, psMNIST: B=128, C=16, N=256, k=3, T=784; docs/PERFORMANCE.md)
---------------------------------------------------------------------------------------------
* Forward 6.4 ms and backward 6.8 ms with 8 warps and "ieee"; 4 warps and "tf32x3" (now the defaults for C <= 16)
  3.9 and 4.8 ms at the same error (2e-7 relative against float64); the forward with the encoder fused 3.5 ms.
  About 5 us a step: latency-bound, as 128 programs cover 128 of the 132 SMs once.
* The first in-kernel weight gradients (the step's whole [C, N] tile as the products' operand) spilled 27-46 KB a
  thread and took 408 ms; ``conv_param_grads`` takes 7.5 ms.  The current chunked version compiles without spills
  for sm_90 (``test_paper_shapes_compile_without_spills``: ptxas -v on an ahead-of-time compile, no GPU needed) and
  is not yet timed on a GPU: ``benchmarks/kernel_tune.py`` does both.
* Three shapes of a backward test failed on the GPU (see ``gpu_verified``): only the verified shapes run here on
  CUDA.  A GPU session runs ``tests/test_triton_rnn.py`` first (``benchmarks/gpu_session.sh``).

Limits: float32 only; k odd with k <= N; one batch sample per program (B < number of SMs leaves SMs idle); per
sample, T * C * N and T times U's (x's, G's) time stride must stay below 2**31 elements (int32 offsets; the batch
offset is int64);
H, h0 and the outputs are contiguous (U and G may have any strides).  Each distinct (C, N, k) compiles a kernel.
"""
from __future__ import annotations

import functools
import os
import types
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # the kernels' ``tl.constexpr`` annotations stay strings (future annotations); Triton reads them
    import triton.language as tl

__all__ = [
    "available",
    "wrnn_sequence_forward",
    "wrnn_sequence_backward",
    "fused_weight_grads",
    "gpu_verified",
    "conv_param_grads",
    "reference_forward",
    "reference_backward",
]

# Widest register tile ([C_PAD, BLOCK_N] elements) the default chunking allows; a GPU session may tune block_n.
_TILE_ELEMENTS = 4096
# With fewer channels than this, the conv is an explicit loop of rank-1 updates instead of a padded tl.dot.
_DOT_MIN_CHANNELS = 16


@functools.lru_cache(maxsize=None)
def _triton():
    """The triton module, imported on first need (None when not installed), so that importing this module neither
    needs Triton nor fixes its mode: see ``_kernels``."""
    try:
        import triton
        import triton.language  # noqa: F401
    except ImportError:
        return None
    return triton


def _interpret_mode() -> bool:
    # "1" only: the one spelling every Triton release reads as "interpret" (newer ones also take "true"/"on").
    return os.environ.get("TRITON_INTERPRET", "0").strip() == "1"


def available(x: torch.Tensor | torch.device | str | None = None) -> bool:
    """Whether the Triton kernels can run (on ``x``'s device, if given): Triton importable, and either CUDA (for
    CUDA tensors / a CUDA device, or any when ``x`` is None) or TRITON_INTERPRET=1 (the interpreter runs CPU
    tensors).  Imports triton on first call."""
    if _triton() is None:
        return False
    if _interpret_mode():
        return True
    if x is None:
        return torch.cuda.is_available()
    device = x.device if isinstance(x, torch.Tensor) else torch.device(x)
    return device.type == "cuda" and torch.cuda.is_available()


# --------------------------------------------------------------------------------------------------------------
# Triton kernels (built lazily: the decorator decides JIT vs interpreter from TRITON_INTERPRET when it runs)
# --------------------------------------------------------------------------------------------------------------
# The kernel bodies are plain module-level functions; ``_kernels`` decorates copies of them with triton.jit on first
# use, once per mode (the decorator picks the compiler or the interpreter from TRITON_INTERPRET when it runs).  They
# are module-level, not closures, because Triton resolves the helpers a kernel calls through its globals.
def _ring_conv(src_ptr, w_ptr, n0,
               C: tl.constexpr, N: tl.constexpr, K: tl.constexpr, SIGN: tl.constexpr,
               C_PAD: tl.constexpr, BLOCK_N: tl.constexpr, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """acc[o, n] = sum_i sum_j w[o, i, j] * src[i, (n + SIGN*(j - K//2)) mod N] for n in n0 + [0, BLOCK_N).

    src is one sample's contiguous [C, N] state in global memory, w a contiguous [C, C, K] weight."""
    P: tl.constexpr = K // 2
    offs_o = tl.arange(0, C_PAD)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    o_mask = offs_o < C
    n_mask = offs_n < N
    acc = tl.full([C_PAD, BLOCK_N], 0.0, tl.float32)  # not tl.zeros: a @jit helper, see _kernels
    if USE_DOT:
        offs_i = tl.arange(0, C_PAD)
        i_mask = offs_i < C
        w_mask = o_mask[:, None] & i_mask[None, :]
        x_mask = i_mask[:, None] & n_mask[None, :]
        for j in tl.static_range(K):
            src_n = (offs_n + (SIGN * (j - P) + N)) % N
            w = tl.load(w_ptr + offs_o[:, None] * (C * K) + offs_i[None, :] * K + j, mask=w_mask, other=0.0)
            x = tl.load(src_ptr + offs_i[:, None] * N + src_n[None, :], mask=x_mask, other=0.0)
            acc = tl.dot(w, x, acc=acc, input_precision=PRECISION)
    else:
        for i in range(C):
            for j in tl.static_range(K):
                src_n = (offs_n + (SIGN * (j - P) + N)) % N
                w = tl.load(w_ptr + offs_o * (C * K) + i * K + j, mask=o_mask, other=0.0)
                x = tl.load(src_ptr + i * N + src_n, mask=n_mask, other=0.0)
                acc += w[:, None] * x[None, :]
    return acc


def _fwd_step(prev_ptr, u_b, t, s_ut, s_uc, s_un, v_ptr, vb_ptr, D, out_ptr, w_ptr, bias,
              C: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
              C_PAD: tl.constexpr, N_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
              USE_DOT: tl.constexpr, PRECISION: tl.constexpr, ENCODE: tl.constexpr):
    """out = relu(conv(prev) + bias + u_t) for one sample and step t, in chunks of BLOCK_N columns.  u_t is read
    from U (``u_b`` + t * s_ut, strides s_uc, s_un), or with ENCODE computed from the input row x_t (``u_b``: x of
    this sample, s_uc its feature stride, D features): u_t = vb + sum_d x_t[d] * Vt[d], the model's encoder (Vt its
    weight transposed, [D, C*N] contiguous: each feature's row is read coalesced)."""
    offs_c = tl.arange(0, C_PAD)
    c_mask = offs_c < C
    for n0 in tl.static_range(0, N_PAD, BLOCK_N):
        acc = _ring_conv(prev_ptr, w_ptr, n0, C, N, K, 1, C_PAD, BLOCK_N, USE_DOT, PRECISION)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask = c_mask[:, None] & (offs_n[None, :] < N)
        unit = offs_c[:, None] * N + offs_n[None, :]
        if ENCODE:
            u = tl.load(vb_ptr + unit, mask=mask, other=0.0)
            for d in range(D):
                xd = tl.load(u_b + t * s_ut + d * s_uc)
                u += xd * tl.load(v_ptr + d * (C * N) + unit, mask=mask, other=0.0)
        else:
            u = tl.load(u_b + t * s_ut + offs_c[:, None] * s_uc + offs_n[None, :] * s_un, mask=mask, other=0.0)
        h = tl.maximum(acc + bias[:, None] + u, 0.0)
        tl.store(out_ptr + unit, h, mask=mask)


def wrnn_fwd_kernel(u_ptr, v_ptr, vb_ptr, h0_ptr, w_ptr, bias_ptr, h_ptr, T, D,
                    s_ub, s_ut, s_uc, s_un,
                    C: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
                    C_PAD: tl.constexpr, N_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                    USE_DOT: tl.constexpr, PRECISION: tl.constexpr, ENCODE: tl.constexpr, ALL: tl.constexpr):
    """One program = one batch sample, whole time loop.  h0 [B, C, N] and H are contiguous; U (or x) is strided.
    ALL: H [B, T, C, N] receives every state; else H [B, 2, C, N] is a ring of two rows used in turn (no gradient
    wanted: the final state ends in row (T-1) % 2).  The shifted operand of step t is re-read from the row this
    program wrote at step t-1."""
    b = tl.program_id(0).to(tl.int64)
    offs_c = tl.arange(0, C_PAD)
    bias = tl.load(bias_ptr + offs_c, mask=offs_c < C, other=0.0)
    u_b = u_ptr + b * s_ub
    if ALL:
        h_b = h_ptr + b * T * (C * N)
    else:
        h_b = h_ptr + b * 2 * (C * N)
    _fwd_step(h0_ptr + b * (C * N), u_b, 0, s_ut, s_uc, s_un, v_ptr, vb_ptr, D, h_b, w_ptr, bias,
              C, N, K, C_PAD, N_PAD, BLOCK_N, USE_DOT, PRECISION, ENCODE)
    for t in range(1, T):
        tl.debug_barrier()  # row t-1 fully stored (and, in the ring, row t's old state fully read) by every thread
        if ALL:
            prev = t - 1
            cur = t
        else:
            prev = (t - 1) % 2
            cur = t % 2
        _fwd_step(h_b + prev * (C * N), u_b, t, s_ut, s_uc, s_un, v_ptr, vb_ptr, D, h_b + cur * (C * N), w_ptr,
                  bias, C, N, K, C_PAD, N_PAD, BLOCK_N, USE_DOT, PRECISION, ENCODE)


def _shifted_t(src_ptr, n0, shift, C: tl.constexpr, N: tl.constexpr, C_PAD: tl.constexpr, BLOCK_N: tl.constexpr):
    """[BLOCK_N, C_PAD] tile x[n, i] = src[i, (n + shift) mod N]: a state, shifted and transposed (zero padded)."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_i = tl.arange(0, C_PAD)
    src_n = (offs_n + (shift + N)) % N
    mask = (offs_n[:, None] < N) & (offs_i[None, :] < C)
    return tl.load(src_ptr + offs_i[None, :] * N + src_n[:, None], mask=mask, other=0.0)


def _tap_grad(d, prev_ptr, c0, shift, acc, C: tl.constexpr, N: tl.constexpr, C_PAD: tl.constexpr,
              DW_BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """acc + d @ shifted(prev, shift)^T over the ring units c0 + [0, DW_BLOCK): one tap's share of dW."""
    return tl.dot(d, _shifted_t(prev_ptr, c0, shift, C, N, C_PAD, DW_BLOCK), acc=acc, input_precision=PRECISION)


def _weight_grads(d_ptr, prev_ptr, dw0, dw1, dw2, dw3, dw4,
                  C: tl.constexpr, N: tl.constexpr, K: tl.constexpr, C_PAD: tl.constexpr, N_PAD: tl.constexpr,
                  DW_BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """dW[:, :, j] += d @ shifted(prev, j - K//2)^T for the taps j < K (K <= 5: one register tile per tap), d read
    back from its dU row in chunks of DW_BLOCK ring units: small operands, so the products add few registers to
    the backward's (with the step's whole [C, N] tile as operand ptxas spilled tens of KB a thread, sm_90)."""
    P: tl.constexpr = K // 2
    offs_o = tl.arange(0, C_PAD)
    for c0 in range(0, N_PAD, DW_BLOCK):  # not unrolled: the chunks' loads stay one chunk ahead at most
        offs_n = c0 + tl.arange(0, DW_BLOCK)
        d = tl.load(d_ptr + offs_o[:, None] * N + offs_n[None, :], mask=(offs_o[:, None] < C) & (offs_n[None, :] < N),
                    other=0.0)
        dw0 = _tap_grad(d, prev_ptr, c0, 0 - P, dw0, C, N, C_PAD, DW_BLOCK, PRECISION)
        if K > 1:  # one accumulator per tap: Triton has no list of register tiles
            dw1 = _tap_grad(d, prev_ptr, c0, 1 - P, dw1, C, N, C_PAD, DW_BLOCK, PRECISION)
        if K > 2:
            dw2 = _tap_grad(d, prev_ptr, c0, 2 - P, dw2, C, N, C_PAD, DW_BLOCK, PRECISION)
        if K > 3:
            dw3 = _tap_grad(d, prev_ptr, c0, 3 - P, dw3, C, N, C_PAD, DW_BLOCK, PRECISION)
        if K > 4:
            dw4 = _tap_grad(d, prev_ptr, c0, 4 - P, dw4, C, N, C_PAD, DW_BLOCK, PRECISION)
    return dw0, dw1, dw2, dw3, dw4


def _bwd_step(d_next_ptr, g_ptr, s_gc, s_gn, h_ptr, out_ptr, wt_ptr,
              C: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
              C_PAD: tl.constexpr, N_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
              USE_DOT: tl.constexpr, PRECISION: tl.constexpr, HAS_G: tl.constexpr, HAS_MASK: tl.constexpr):
    """out = (G + convT(d_next)) [* (H > 0)] for one sample and one step, in chunks of BLOCK_N columns."""
    offs_c = tl.arange(0, C_PAD)
    c_mask = offs_c < C
    for n0 in tl.static_range(0, N_PAD, BLOCK_N):
        g = _ring_conv(d_next_ptr, wt_ptr, n0, C, N, K, -1, C_PAD, BLOCK_N, USE_DOT, PRECISION)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask = c_mask[:, None] & (offs_n[None, :] < N)
        if HAS_G:
            g += tl.load(g_ptr + offs_c[:, None] * s_gc + offs_n[None, :] * s_gn, mask=mask, other=0.0)
        if HAS_MASK:
            h = tl.load(h_ptr + offs_c[:, None] * N + offs_n[None, :], mask=mask, other=0.0)
            g = tl.where(h > 0.0, g, 0.0)
        tl.store(out_ptr + offs_c[:, None] * N + offs_n[None, :], g, mask=mask)


def wrnn_bwd_kernel(g_ptr, gl_ptr, h_ptr, h0_ptr, wt_ptr, du_ptr, dh0_ptr, dw_ptr, T,
                    s_gb, s_gt, s_gc, s_gn,
                    C: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
                    C_PAD: tl.constexpr, N_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                    USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
                    HAS_G: tl.constexpr, HAS_GL: tl.constexpr, GRADS: tl.constexpr, DW_BLOCK: tl.constexpr):
    """One program = one batch sample, reverse time loop.  H, dU [B, T, C, N], h0, dh0 [B, C, N] are contiguous;
    G (the upstream gradient of every state, with HAS_G) is strided; gl [B, C, N] (HAS_GL) is the upstream gradient
    of the final state.  wt is the transposed weight Wt[i, o, j] = W[o, i, j].  The shifted operand of each step is
    re-read from dU[b, t+1], written by this program one step earlier.  GRADS (tl.dot shapes, K <= 5) also
    accumulates this sample's dW [C, C, K], stored at the end to dw [B, C, C, K]: row t's share is added one step
    later, after the barrier that makes dU[b, t] visible to every thread."""
    b = tl.program_id(0).to(tl.int64)
    offs_c = tl.arange(0, C_PAD)
    c_mask = offs_c < C
    g_b = g_ptr + b * s_gb
    h_b = h_ptr + b * T * (C * N)
    h0_b = h0_ptr + b * (C * N)
    du_b = du_ptr + b * T * (C * N)
    dw0 = tl.full([C_PAD, C_PAD], 0.0, tl.float32)
    dw1 = tl.full([C_PAD, C_PAD], 0.0, tl.float32)
    dw2 = tl.full([C_PAD, C_PAD], 0.0, tl.float32)
    dw3 = tl.full([C_PAD, C_PAD], 0.0, tl.float32)
    dw4 = tl.full([C_PAD, C_PAD], 0.0, tl.float32)
    # Last step: d_T = (G_T + gl) * (H_T > 0).
    last = (T - 1) * (C * N)
    for n0 in tl.static_range(0, N_PAD, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask = c_mask[:, None] & (offs_n[None, :] < N)
        unit = offs_c[:, None] * N + offs_n[None, :]
        g = tl.full([C_PAD, BLOCK_N], 0.0, tl.float32)
        if HAS_G:
            g += tl.load(g_b + (T - 1) * s_gt + offs_c[:, None] * s_gc + offs_n[None, :] * s_gn, mask=mask,
                         other=0.0)
        if HAS_GL:
            g += tl.load(gl_ptr + b * (C * N) + unit, mask=mask, other=0.0)
        h = tl.load(h_b + last + unit, mask=mask, other=0.0)
        tl.store(du_b + last + unit, tl.where(h > 0.0, g, 0.0), mask=mask)
    # Rows s = T-2 .. 0: d_s = (G_s + convT(d_{s+1})) * (H_s > 0).  Row s+1 read h_s = H[b, s] at its step.
    for r in range(1, T):
        s = T - 1 - r
        tl.debug_barrier()  # dU[b, s+1] fully stored before any thread reads it shifted
        _bwd_step(du_b + (s + 1) * (C * N), g_b + s * s_gt, s_gc, s_gn, h_b + s * (C * N), du_b + s * (C * N),
                  wt_ptr, C, N, K, C_PAD, N_PAD, BLOCK_N, USE_DOT, PRECISION, HAS_G, True)
        if GRADS:
            dw0, dw1, dw2, dw3, dw4 = _weight_grads(du_b + (s + 1) * (C * N), h_b + s * (C * N),
                                                    dw0, dw1, dw2, dw3, dw4, C, N, K, C_PAD, N_PAD, DW_BLOCK,
                                                    PRECISION)
    # dh0 = convT(d_1): no upstream gradient and no ReLU on h0.  Row 0 read h0.
    tl.debug_barrier()
    _bwd_step(du_b, g_b, s_gc, s_gn, h_b, dh0_ptr + b * (C * N),
              wt_ptr, C, N, K, C_PAD, N_PAD, BLOCK_N, USE_DOT, PRECISION, False, False)
    if GRADS:
        dw0, dw1, dw2, dw3, dw4 = _weight_grads(du_b, h0_b, dw0, dw1, dw2, dw3, dw4, C, N, K, C_PAD, N_PAD,
                                                DW_BLOCK, PRECISION)
        offs_i = tl.arange(0, C_PAD)
        w_mask = c_mask[:, None] & (offs_i[None, :] < C)
        w_at = dw_ptr + b * (C * C * K) + offs_c[:, None] * (C * K) + offs_i[None, :] * K
        tl.store(w_at, dw0, mask=w_mask)
        if K > 1:
            tl.store(w_at + 1, dw1, mask=w_mask)
        if K > 2:
            tl.store(w_at + 2, dw2, mask=w_mask)
        if K > 3:
            tl.store(w_at + 3, dw3, mask=w_mask)
        if K > 4:
            tl.store(w_at + 4, dw4, mask=w_mask)


_KERNEL_FUNCTIONS = (_ring_conv, _fwd_step, wrnn_fwd_kernel, _shifted_t, _tap_grad, _weight_grads, _bwd_step,
                     wrnn_bwd_kernel)


@functools.lru_cache(maxsize=None)
def _kernels(interpret: bool):
    """(forward kernel, backward kernel), jitted for the current TRITON_INTERPRET mode (``interpret``, which keys the
    cache).  Each function is re-created over a private globals dict holding triton, tl and the jitted helpers."""
    triton = _triton()
    if triton is None:
        raise RuntimeError("triton is not installed")
    if interpret != _interpret_mode():  # triton.jit reads the environment, not our argument: never cache a mismatch
        raise RuntimeError(f"_kernels(interpret={interpret}) called with TRITON_INTERPRET={_interpret_mode()}")
    namespace = {"__name__": __name__, "triton": triton, "tl": triton.language}
    for fn in _KERNEL_FUNCTIONS:  # in dependency order: callees first
        copy = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__)
        copy.__qualname__, copy.__doc__ = fn.__qualname__, fn.__doc__
        # The tl.constexpr annotations live on the function, not its code: without them Triton 3.6 (inspect.signature)
        # takes C, N, PRECISION... for runtime arguments and fails to launch ("failed to specialize ... str").
        copy.__annotations__ = dict(fn.__annotations__)
        namespace[fn.__name__] = triton.jit(copy)
    return namespace["wrnn_fwd_kernel"], namespace["wrnn_bwd_kernel"]


# --------------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------------
def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _config(C: int, N: int, use_dot: bool | None, block_n: int | None):
    use_dot = C >= _DOT_MIN_CHANNELS if use_dot is None else bool(use_dot)
    c_pad = max(16 if use_dot else 2, _next_pow2(C))
    n_pad = max(16, _next_pow2(N))
    if block_n is None:
        block_n = min(n_pad, max(16, _TILE_ELEMENTS // c_pad))
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")
    block_n = min(block_n, n_pad)
    return use_dot, c_pad, n_pad, block_n


def _warps(num_warps: int | None, c_pad: int, block_n: int) -> int:
    # Measured on an H200 (2026-11-26, psMNIST C=16, N=256): 4 warps 20 % faster than 8 in both kernels.  8 stay for
    # 4096-element tiles of 32 padded channels (adding, C=27), where 4 warps needed 214-253 registers a thread (sm_90,
    # ahead-of-time compile): not yet timed on a GPU.
    if num_warps is None:
        return 8 if c_pad >= 32 and c_pad * block_n >= _TILE_ELEMENTS else 4
    return int(num_warps)


# tl.dot's input precision by default: tf32x3 (three TF32 tensor-core products, the error of fp32: 2e-7 relative
# against float64 on the H200 for psMNIST, as "ieee"), 36 % faster there than "ieee"; plain "tf32" would miss 1e-5.
DEFAULT_PRECISION = "tf32x3"


def _check_weight(W: torch.Tensor, C: int, N: int, ref: torch.Tensor) -> int:
    if W.dim() != 3 or W.shape[0] != C or W.shape[1] != C:
        raise ValueError(f"W must be [C, C, k] with C={C}, got {tuple(W.shape)}")
    k = W.shape[2]
    if k < 1 or k % 2 == 0 or k > N:
        raise ValueError(f"kernel size must be odd, positive and <= N={N}, got {k}")
    if W.dtype != torch.float32:
        raise TypeError(f"the Triton kernels are float32 only, got W {W.dtype}")
    if W.device != ref.device:
        raise ValueError(f"W is on {W.device}, the sequence on {ref.device}")
    return k


def _check_seq(X: torch.Tensor, name: str, dims: int = 4) -> tuple[int, ...]:
    if X.dim() != dims:
        raise ValueError(f"{name} must be {'[B, T, C, N]' if dims == 4 else '[B, T, D]'}, got {tuple(X.shape)}")
    if X.dtype != torch.float32:
        raise TypeError(f"the Triton kernels are float32 only, got {name} {X.dtype}")
    if not available(X):
        raise RuntimeError(f"Triton kernels cannot run on {X.device} (triton missing, or no CUDA and TRITON_INTERPRET "
                           "unset)")
    return tuple(X.shape)


def _check_state(h0: torch.Tensor, B: int, C: int, N: int, ref: torch.Tensor, name: str = "h0") -> torch.Tensor:
    if tuple(h0.shape) != (B, C, N):
        raise ValueError(f"{name} must be [B, C, N] = {(B, C, N)}, got {tuple(h0.shape)}")
    if h0.dtype != torch.float32:
        raise TypeError(f"the Triton kernels are float32 only, got {name} {h0.dtype}")
    if h0.device != ref.device:
        raise ValueError(f"{name} is on {h0.device}, the sequence on {ref.device}")
    return h0.contiguous()


def _check_vector(v: torch.Tensor | None, n: int, name: str, ref: torch.Tensor) -> torch.Tensor:
    if v is None:
        return torch.zeros(n, dtype=torch.float32, device=ref.device)
    if tuple(v.shape) != (n,) or v.dtype != torch.float32 or v.device != ref.device:
        raise ValueError(f"{name} must be float32 [{n}] on {ref.device}, got {v.dtype} {tuple(v.shape)} on {v.device}")
    return v.contiguous()


def _device_ctx(x: torch.Tensor):
    import contextlib
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def wrnn_sequence_forward(U: torch.Tensor, h0: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None, *,
                          encoder: tuple[torch.Tensor, torch.Tensor | None] | None = None, keep_all: bool = True,
                          use_dot: bool | None = None, block_n: int | None = None, num_warps: int | None = None,
                          input_precision: str = DEFAULT_PRECISION) -> torch.Tensor:
    """Every state of the sequence, H [B, T, C, N] (contiguous), h_t = relu(conv(h_{t-1}) + bias + u_t); with
    ``keep_all=False`` only the final state [B, C, N] (two rows of scratch instead of T: no gradient wanted).

    u_t = U[:, t] for U [B, T, C, N] (any strides); with ``encoder=(weight [C*N, D], bias [C*N] or None)`` U is the
    model's input x [B, T, D] (any strides) and u_t = x_t @ weight^T + bias is computed in the kernel (the encoder
    fused: no [B, T, C, N] tensor of encoded inputs is written and read).  h0 [B, C, N], W [C, C, k], bias [C] or
    None; all float32 on one device (CUDA, or CPU under TRITON_INTERPRET=1).  Tuning knobs (defaults chosen by
    shape): ``use_dot`` (None: tl.dot for C >= 16), ``block_n`` (columns per tile, a power of two >= 16),
    ``num_warps`` (see ``_warps``), ``input_precision`` (tl.dot's: "ieee" = fp32 FMAs; "tf32x3", the default, three
    TF32 tensor-core products to fp32 accuracy; "tf32" one, less exact)."""
    C, N = W.shape[0], h0.shape[-1]
    if encoder is None:
        B, T, C, N = _check_seq(U, "U")
        D, v, vb, strides = 0, U, U, U.stride()
    else:
        B, T, D = _check_seq(U, "x", dims=3)
        enc_w, enc_b = encoder
        if tuple(enc_w.shape) != (C * N, D) or enc_w.dtype != torch.float32 or enc_w.device != U.device:
            raise ValueError(f"the encoder weight must be float32 [C*N, D] = {(C * N, D)} on {U.device}, got "
                             f"{enc_w.dtype} {tuple(enc_w.shape)} on {enc_w.device}")
        v, vb, strides = enc_w.t().contiguous(), _check_vector(enc_b, C * N, "the encoder bias", U), (*U.stride(), 0)
    h0 = _check_state(h0, B, C, N, U)
    k = _check_weight(W, C, N, U)
    bias = _check_vector(bias, C, "bias", U)
    H = torch.empty((B, T if keep_all else 2, C, N), dtype=torch.float32, device=U.device)
    if T == 0 or B == 0:
        return H if keep_all else h0.clone()
    use_dot, c_pad, n_pad, block_n = _config(C, N, use_dot, block_n)
    fwd, _ = _kernels(_interpret_mode())
    with _device_ctx(U):
        fwd[(B,)](U, v, vb, h0, W.contiguous(), bias, H, T, D, *strides,
                  C=C, N=N, K=k, C_PAD=c_pad, N_PAD=n_pad, BLOCK_N=block_n, USE_DOT=use_dot,
                  PRECISION=input_precision, ENCODE=encoder is not None, ALL=keep_all,
                  num_warps=_warps(num_warps, c_pad, block_n), num_stages=1)
    return H if keep_all else H[:, (T - 1) % 2].clone()


def gpu_verified(C: int, N: int, k: int) -> bool:
    """Whether the kernels' default configuration at C channels, ring size N and kernel size k has passed the tests
    compiled on a GPU (an H200, Triton 3.6, 2026-11-26): the rank-1 loop (C < 16; the copy model's 6 channels among
    them) and tl.dot on 16 channels with k = 3 and the ring in one chunk (N <= 256: psMNIST's 16x256 among them).
    Three tl.dot shapes of a new backward test failed there (C=16 with N=20 and k=5, C=20 with k=1, both through a
    first version of the in-kernel weight gradients since rewritten, and C=16 with N=40 in chunks of 16: dU off in
    4-20 % of its elements, the same in every gradient mode), not explained yet.  Until a GPU session runs the tests
    again, other shapes (the adding model's 27 channels) train with the plain loop on CUDA: correct, slower."""
    return C < 16 or (C == 16 and k == 3 and _next_pow2(N) * 16 <= _TILE_ELEMENTS)


# Ring units per chunk of the weight-gradient products in the backward kernel (see ``_weight_grads``).  With the
# whole [C, N] tile as their operand (the first version) ptxas spilled 27-46 KB a thread at psMNIST's shape, and the
# backward took 408 ms instead of 5 (H200, 2026-11-26); in 32-unit chunks of a runtime loop it spills nothing (sm_90
# ahead-of-time compile, ``tests/test_triton_rnn.py::test_paper_shapes_compile_without_spills``).
_DW_BLOCK = 32


# Whether the backward kernel accumulates dW where it can (``fused_weight_grads``) by default.  Off until timed on a
# GPU: the first version spilled and took 408 ms on the H200; this one compiles without spills for sm_90 but has not
# run on a GPU yet (``benchmarks/kernel_tune.py`` times both against ``conv_param_grads``, 7.5 ms there).
FUSE_WEIGHT_GRADS = False


def fused_weight_grads(C: int, N: int, k: int, use_dot: bool | None = None, block_n: int | None = None) -> bool:
    """Whether the backward kernel can accumulate dW itself for this shape: tl.dot shapes of at most 16 padded
    channels (C = 16: psMNIST, sMNIST, noisy CIFAR-10; with 32, the adding model's 27, ptxas spilled 80-160 bytes a
    thread) and k <= 5 (a register tile per tap).  Otherwise ``conv_param_grads`` gets dW from dU."""
    use_dot, c_pad, _, _ = _config(C, N, use_dot, block_n)
    return use_dot and c_pad <= 16 and k <= 5


def wrnn_sequence_backward(G: torch.Tensor | None, H: torch.Tensor, h0: torch.Tensor, W: torch.Tensor, *,
                           g_last: torch.Tensor | None = None, weight_grads: bool = False, fuse: bool | None = None,
                           use_dot: bool | None = None, block_n: int | None = None, num_warps: int | None = None,
                           input_precision: str = DEFAULT_PRECISION) -> tuple[torch.Tensor, ...]:
    """(dU, dh0) for upstream gradients G [B, T, C, N] of every state H [B, T, C, N] (from the forward; None: none)
    and ``g_last`` [B, C, N] of the final state (None: none; a model reading only the last state never builds G).

    d_t = g * (H_t > 0) (torch's ReLU backward), dU_t = d_t, g <- G_{t-1} + convT(d_t), dh0 = the final g.
    dU [B, T, C, N] and dh0 [B, C, N] come back contiguous.  With ``weight_grads`` also (dW [C, C, k], ds [C, N]),
    dW accumulated inside the kernel with ``fuse`` (None: FUSE_WEIGHT_GRADS) where ``fused_weight_grads`` says it
    can, else by ``conv_param_grads``; ds the sum
    of d_t over samples and steps (the gradient of a per-unit bias; a per-channel one is its sum over the ring).
    Tuning knobs as for ``wrnn_sequence_forward``."""
    B, T, C, N = _check_seq(H, "H")
    if G is not None and (tuple(G.shape) != (B, T, C, N) or G.dtype != H.dtype or G.device != H.device):
        raise ValueError(f"G must match H {(B, T, C, N)} {H.dtype} on {H.device}, got {tuple(G.shape)} {G.dtype} "
                         f"on {G.device}")
    h0 = _check_state(h0, B, C, N, H)
    if g_last is not None:
        g_last = _check_state(g_last, B, C, N, H, "g_last")
    k = _check_weight(W, C, N, H)
    dU = torch.empty((B, T, C, N), dtype=H.dtype, device=H.device)
    dh0 = torch.zeros((B, C, N), dtype=H.dtype, device=H.device)
    fuse = FUSE_WEIGHT_GRADS if fuse is None else fuse
    fused = weight_grads and fuse and fused_weight_grads(C, N, k, use_dot, block_n)
    if T == 0 or B == 0:  # the final state is h0: its gradient passes straight through
        if g_last is not None:
            dh0 = g_last.clone()
        return (dU, dh0, H.new_zeros((C, C, k)), H.new_zeros((C, N))) if weight_grads else (dU, dh0)
    use_dot, c_pad, n_pad, block_n = _config(C, N, use_dot, block_n)
    _, bwd = _kernels(_interpret_mode())
    wt = W.transpose(0, 1).contiguous()  # Wt[i, o, j] = W[o, i, j]
    H = H.contiguous()
    dw = H.new_empty((B, C, C, k)) if fused else dh0
    with _device_ctx(H):
        bwd[(B,)](H if G is None else G, H if g_last is None else g_last, H, h0, wt, dU, dh0, dw, T,
                  *(G.stride() if G is not None else (0, 0, 0, 0)),
                  C=C, N=N, K=k, C_PAD=c_pad, N_PAD=n_pad, BLOCK_N=block_n, USE_DOT=use_dot,
                  PRECISION=input_precision, HAS_G=G is not None, HAS_GL=g_last is not None, GRADS=fused,
                  DW_BLOCK=min(_DW_BLOCK, n_pad), num_warps=_warps(num_warps, c_pad, block_n), num_stages=1)
    if not weight_grads:
        return dU, dh0
    dW = dw.sum(0) if fused else conv_param_grads(dU, H, h0, k)[0]
    return dU, dh0, dW, dU.sum(dim=(0, 1))


# --------------------------------------------------------------------------------------------------------------
# Parameter gradients (torch GEMMs) and the torch reference (any float dtype, any device)
# --------------------------------------------------------------------------------------------------------------
def conv_param_grads(dU: torch.Tensor, H: torch.Tensor, h0: torch.Tensor,
                     kernel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dW [C, C, k], dbias [C]) from dU = every d_t [B, T, C, N], the states H [B, T, C, N] and h0 [B, C, N]:
    dbias = sum d, dW[o, i, j] = sum_{b,t,n} d_t[b, o, n] h_{t-1}[b, i, (n + j - k//2) mod N].

    Batched products over the flat rows r = b*T + t of views, no copies: row r's previous state is row r-1, except at
    t = 0 (h0, not the previous sample's last state), fixed by two small corrections; the ring's wrap is one more
    product per tap over the columns it moves. The first GPU measurement (H200, psMNIST shapes) timed the earlier
    version, three 1.6 GB rolled copies and ``tensordot``s, at 22.6 ms, more than both kernels."""
    B, T, C, N = dU.shape
    p = kernel // 2
    dW = dU.new_zeros((C, C, kernel))
    dbias = dU.sum(dim=(0, 1, 3))
    if B == 0 or T == 0:
        return dW, dbias
    d, h = dU.reshape(B * T, C, N), H.reshape(B * T, C, N)
    first = dU[:, 0]
    for j in range(kernel):
        s = j - p
        dW[:, :, j] = (_ring_corr(d[1:], h[:-1], s) - _ring_corr(first[1:], H[:-1, -1], s)
                       + _ring_corr(first, h0, s))
    return dW, dbias


def _ring_corr(d: torch.Tensor, h: torch.Tensor, s: int) -> torch.Tensor:
    """sum_r sum_n d[r, o, n] h[r, i, (n + s) mod N] -> [C, C], for d, h [R, C, N] (views; split at the wrap)."""
    N = d.shape[-1]
    if d.shape[0] == 0:
        return d.new_zeros((d.shape[1], h.shape[1]))
    s %= N
    out = torch.bmm(d[..., :N - s], h[..., s:].transpose(1, 2)).sum(0)
    if s:
        out += torch.bmm(d[..., N - s:], h[..., :s].transpose(1, 2)).sum(0)
    return out


def _circular_pad(h: torch.Tensor, pad: int) -> torch.Tensor:
    return h if pad == 0 else torch.cat([h[..., -pad:], h, h[..., :pad]], dim=-1)


def reference_forward(U: torch.Tensor, h0: torch.Tensor, W: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """Plain torch loop of the forward recurrence (differentiable; any dtype/device): H [B, T, C, N]."""
    p = W.shape[-1] // 2
    h, hs = h0, []
    for t in range(U.shape[1]):
        h = torch.relu(F.conv1d(_circular_pad(h, p), W, bias) + U[:, t])
        hs.append(h)
    if not hs:
        return U.new_empty(U.shape)
    return torch.stack(hs, 1)


def reference_backward(G: torch.Tensor, H: torch.Tensor, h0: torch.Tensor,
                       W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch loop of the reverse recurrence: (dU, dh0).  convT(d) is written as a circular conv1d with the
    transposed, flipped kernel (independent of the kernels' indexing): W'[i, o, j'] = W[o, i, k-1-j']."""
    B, T, C, N = G.shape
    p = W.shape[-1] // 2
    wt = W.transpose(0, 1).flip(-1)
    dU = torch.zeros_like(G)
    g = G[:, T - 1] if T else torch.zeros_like(h0)
    for s in range(T - 1, -1, -1):
        d = g * (H[:, s] > 0).to(g.dtype)
        dU[:, s] = d
        back = F.conv1d(_circular_pad(d, p), wt)
        g = G[:, s - 1] + back if s > 0 else back
    return dU, g
