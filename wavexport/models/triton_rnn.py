"""Fused Triton kernels for the Wave-RNN training recurrence, plus the torch reference they are tested against.

The recurrence (float32), state h [B, C, N] (C channels, each a ring of N units), per step t = 1..T:

    pre_t = conv(h_{t-1}) + U_t,   h_t = relu(pre_t)
    conv(h)[b, o, n] = bias[o] + sum_i sum_j W[o, i, j] * h[b, i, (n + j - k//2) mod N]

with U [B, T, C, N] the already-encoded input.  ``wrnn_sequence_forward`` returns every h_t; ``wrnn_sequence_backward``
runs the reverse recurrence (d_t = g * (H_t > 0), g <- G_{t-1} + convT(d_t)) and returns dU (= every d_t) and dh0.
dW and dbias are not computed in the kernels: ``conv_param_grads`` gets them from dU and the states with GEMMs.

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
  (``use_dot``) it is ``tl.dot`` with C padded to a power of two >= 16 (tl.dot's minimum), ``input_precision="ieee"``
  by default (true fp32: Triton's default is TF32 on Ampere/Hopper, which would miss a 1e-5 tolerance); otherwise an
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

What a GPU session should measure (H100, psMNIST: B=128, C=16, N=256, k=3, T=784)
-----------------------------------------------------------------------------------
* Correctness on CUDA against ``reference_forward``/``reference_backward`` (the tests run unchanged on CUDA).
* Forward and backward wall time vs. the PyTorch per-step loop (torch.cuda.Event timing, after a warm-up launch that
  compiles).  Expectation: latency-bound, roughly 1-3 us per step per direction (~1-2.5 ms per 784-step pass), since
  128 programs cover 128 of 132 SMs once and each step is ~0.2 MFMA per sample.
* Sweep ``num_warps`` in {4, 8} (default 8 for 4096-element tiles), ``block_n`` in {64, 128, 256} and
  ``input_precision`` in {"ieee", "tf32x3", "tf32"} (tf32x3 uses tensor cores at ~fp32 accuracy; check the error it
  gives against the float64 reference).
* Register use: an ahead-of-time sm_90 compile with Triton 3.9 (no GPU needed; see the tests) gave, for the default
  4-warp/8-warp choice, fwd 148/128 and bwd 111/127 registers at C=16, N=256, fwd 214/127 and bwd 253/178 at C=27,
  N=100, no local memory (spills) in any; confirm with ``n_spills`` of the kernel compiled on the GPU's Triton.
* HBM traffic is dominated by reading U and writing H (1.6 GB each for psMNIST at fp32), ~1 ms at H100 bandwidth.

Limits: float32 only; k odd with k <= N; one batch sample per program (B < number of SMs leaves SMs idle); per
sample, T times U's (and G's) time stride must stay below 2**31 elements (int32 offsets; the batch offset is int64);
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


def _fwd_step(prev_ptr, u_ptr, s_uc, s_un, out_ptr, w_ptr, bias,
              C: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
              C_PAD: tl.constexpr, N_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
              USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """out = relu(conv(prev) + bias + u) for one sample and one step, in chunks of BLOCK_N columns."""
    offs_c = tl.arange(0, C_PAD)
    c_mask = offs_c < C
    for n0 in tl.static_range(0, N_PAD, BLOCK_N):
        acc = _ring_conv(prev_ptr, w_ptr, n0, C, N, K, 1, C_PAD, BLOCK_N, USE_DOT, PRECISION)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask = c_mask[:, None] & (offs_n[None, :] < N)
        u = tl.load(u_ptr + offs_c[:, None] * s_uc + offs_n[None, :] * s_un, mask=mask, other=0.0)
        h = tl.maximum(acc + bias[:, None] + u, 0.0)
        tl.store(out_ptr + offs_c[:, None] * N + offs_n[None, :], h, mask=mask)


def wrnn_fwd_kernel(u_ptr, h0_ptr, w_ptr, bias_ptr, h_ptr, T,
                    s_ub, s_ut, s_uc, s_un,
                    C: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
                    C_PAD: tl.constexpr, N_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                    USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """One program = one batch sample, whole time loop.  h0 [B, C, N] and H [B, T, C, N] are contiguous; U is
    strided.  The shifted operand of step t is re-read from H[b, t-1], written by this program at step t-1."""
    b = tl.program_id(0).to(tl.int64)
    offs_c = tl.arange(0, C_PAD)
    bias = tl.load(bias_ptr + offs_c, mask=offs_c < C, other=0.0)
    u_b = u_ptr + b * s_ub
    h_b = h_ptr + b * T * (C * N)
    # Step 1 reads h0; step t >= 2 reads H[b, t-2] (0-based rows).
    _fwd_step(h0_ptr + b * (C * N), u_b, s_uc, s_un, h_b, w_ptr, bias,
              C, N, K, C_PAD, N_PAD, BLOCK_N, USE_DOT, PRECISION)
    for t in range(1, T):
        tl.debug_barrier()  # H[b, t-1] fully stored before any thread reads it shifted
        _fwd_step(h_b + (t - 1) * (C * N), u_b + t * s_ut, s_uc, s_un, h_b + t * (C * N), w_ptr, bias,
                  C, N, K, C_PAD, N_PAD, BLOCK_N, USE_DOT, PRECISION)


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


def wrnn_bwd_kernel(g_ptr, h_ptr, wt_ptr, du_ptr, dh0_ptr, T,
                    s_gb, s_gt, s_gc, s_gn,
                    C: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
                    C_PAD: tl.constexpr, N_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                    USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """One program = one batch sample, reverse time loop.  H, dU [B, T, C, N] and dh0 [B, C, N] are contiguous;
    G is strided.  wt is the transposed weight Wt[i, o, j] = W[o, i, j].  The shifted operand of each step is
    re-read from dU[b, t+1], written by this program one step earlier."""
    b = tl.program_id(0).to(tl.int64)
    offs_c = tl.arange(0, C_PAD)
    c_mask = offs_c < C
    g_b = g_ptr + b * s_gb
    h_b = h_ptr + b * T * (C * N)
    du_b = du_ptr + b * T * (C * N)
    # Last step: d_T = G_T * (H_T > 0).
    last = (T - 1) * (C * N)
    for n0 in tl.static_range(0, N_PAD, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask = c_mask[:, None] & (offs_n[None, :] < N)
        g = tl.load(g_b + (T - 1) * s_gt + offs_c[:, None] * s_gc + offs_n[None, :] * s_gn, mask=mask, other=0.0)
        h = tl.load(h_b + last + offs_c[:, None] * N + offs_n[None, :], mask=mask, other=0.0)
        tl.store(du_b + last + offs_c[:, None] * N + offs_n[None, :], tl.where(h > 0.0, g, 0.0), mask=mask)
    # Rows s = T-2 .. 0: d_s = (G_s + convT(d_{s+1})) * (H_s > 0).
    for r in range(1, T):
        s = T - 1 - r
        tl.debug_barrier()  # dU[b, s+1] fully stored before any thread reads it shifted
        _bwd_step(du_b + (s + 1) * (C * N), g_b + s * s_gt, s_gc, s_gn, h_b + s * (C * N), du_b + s * (C * N),
                  wt_ptr, C, N, K, C_PAD, N_PAD, BLOCK_N, USE_DOT, PRECISION, True, True)
    # dh0 = convT(d_1): no upstream gradient and no ReLU on h0.
    tl.debug_barrier()
    _bwd_step(du_b, g_b, s_gc, s_gn, h_b, dh0_ptr + b * (C * N),
              wt_ptr, C, N, K, C_PAD, N_PAD, BLOCK_N, USE_DOT, PRECISION, False, False)


_KERNEL_FUNCTIONS = (_ring_conv, _fwd_step, _bwd_step, wrnn_fwd_kernel, wrnn_bwd_kernel)


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
    # 8 warps for the 4096-element tiles (psMNIST, C=27): 4 warps need ~150-250 registers a thread there (sm_90,
    # ahead-of-time compile, no spills either way); a GPU session should time both.
    if num_warps is None:
        return 8 if c_pad * block_n >= _TILE_ELEMENTS else 4
    return int(num_warps)


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


def _check_seq(X: torch.Tensor, name: str) -> tuple[int, int, int, int]:
    if X.dim() != 4:
        raise ValueError(f"{name} must be [B, T, C, N], got {tuple(X.shape)}")
    if X.dtype != torch.float32:
        raise TypeError(f"the Triton kernels are float32 only, got {name} {X.dtype}")
    if not available(X):
        raise RuntimeError(f"Triton kernels cannot run on {X.device} (triton missing, or no CUDA and TRITON_INTERPRET "
                           "unset)")
    return tuple(X.shape)


def _check_state(h0: torch.Tensor, B: int, C: int, N: int, ref: torch.Tensor) -> torch.Tensor:
    if tuple(h0.shape) != (B, C, N):
        raise ValueError(f"h0 must be [B, C, N] = {(B, C, N)}, got {tuple(h0.shape)}")
    if h0.dtype != torch.float32:
        raise TypeError(f"the Triton kernels are float32 only, got h0 {h0.dtype}")
    if h0.device != ref.device:
        raise ValueError(f"h0 is on {h0.device}, the sequence on {ref.device}")
    return h0.contiguous()


def _device_ctx(x: torch.Tensor):
    import contextlib
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def wrnn_sequence_forward(U: torch.Tensor, h0: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None, *,
                          use_dot: bool | None = None, block_n: int | None = None, num_warps: int | None = None,
                          input_precision: str = "ieee") -> torch.Tensor:
    """Every state of the sequence, H [B, T, C, N] (contiguous), h_t = relu(conv(h_{t-1}) + bias + U_t).

    U [B, T, C, N] (any strides), h0 [B, C, N], W [C, C, k], bias [C] or None; all float32 on one device (CUDA, or
    CPU under TRITON_INTERPRET=1).  Tuning knobs (defaults chosen by shape): ``use_dot`` (None: tl.dot for C >= 16),
    ``block_n`` (columns per tile, a power of two >= 16), ``num_warps`` (None: 8 for 4096-element tiles, else 4),
    ``input_precision`` (tl.dot's: "ieee" = true fp32; "tf32x3"/"tf32" use tensor cores, less exact)."""
    B, T, C, N = _check_seq(U, "U")
    h0 = _check_state(h0, B, C, N, U)
    k = _check_weight(W, C, N, U)
    if bias is None:
        bias = torch.zeros(C, dtype=U.dtype, device=U.device)
    if tuple(bias.shape) != (C,) or bias.dtype != torch.float32 or bias.device != U.device:
        raise ValueError(f"bias must be float32 [C={C}] on {U.device}, got {bias.dtype} {tuple(bias.shape)} "
                         f"on {bias.device}")
    H = torch.empty((B, T, C, N), dtype=U.dtype, device=U.device)
    if T == 0 or B == 0:
        return H
    use_dot, c_pad, n_pad, block_n = _config(C, N, use_dot, block_n)
    fwd, _ = _kernels(_interpret_mode())
    with _device_ctx(U):
        fwd[(B,)](U, h0, W.contiguous(), bias.contiguous(), H, T, *U.stride(),
                  C=C, N=N, K=k, C_PAD=c_pad, N_PAD=n_pad, BLOCK_N=block_n, USE_DOT=use_dot,
                  PRECISION=input_precision, num_warps=_warps(num_warps, c_pad, block_n), num_stages=1)
    return H


def wrnn_sequence_backward(G: torch.Tensor, H: torch.Tensor, h0: torch.Tensor, W: torch.Tensor, *,
                           use_dot: bool | None = None, block_n: int | None = None, num_warps: int | None = None,
                           input_precision: str = "ieee") -> tuple[torch.Tensor, torch.Tensor]:
    """(dU, dh0) for upstream gradients G [B, T, C, N] of every state H [B, T, C, N] (from the forward).

    d_t = g * (H_t > 0) (torch's ReLU backward), dU_t = d_t, g <- G_{t-1} + convT(d_t), dh0 = the final g.
    dU [B, T, C, N] and dh0 [B, C, N] come back contiguous.  h0 is only checked (it enters dW, see
    ``conv_param_grads``, not these two).  Tuning knobs as for ``wrnn_sequence_forward``."""
    B, T, C, N = _check_seq(G, "G")
    if tuple(H.shape) != (B, T, C, N) or H.dtype != G.dtype or H.device != G.device:
        raise ValueError(f"H must match G {(B, T, C, N)} {G.dtype} on {G.device}, got {tuple(H.shape)} {H.dtype} "
                         f"on {H.device}")
    _check_state(h0, B, C, N, G)
    k = _check_weight(W, C, N, G)
    dU = torch.empty((B, T, C, N), dtype=G.dtype, device=G.device)
    dh0 = torch.zeros((B, C, N), dtype=G.dtype, device=G.device)
    if T == 0 or B == 0:
        return dU, dh0
    use_dot, c_pad, n_pad, block_n = _config(C, N, use_dot, block_n)
    _, bwd = _kernels(_interpret_mode())
    wt = W.transpose(0, 1).contiguous()  # Wt[i, o, j] = W[o, i, j]
    with _device_ctx(G):
        bwd[(B,)](G, H.contiguous(), wt, dU, dh0, T, *G.stride(),
                  C=C, N=N, K=k, C_PAD=c_pad, N_PAD=n_pad, BLOCK_N=block_n, USE_DOT=use_dot,
                  PRECISION=input_precision, num_warps=_warps(num_warps, c_pad, block_n), num_stages=1)
    return dU, dh0


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
