"""Counter-based random numbers (Philox4x32-10) in plain integer tensor ops, identical on
every device.

Entry j of row k of the stream ``(seed, name)`` is a pure function of (seed, name, k, j):
there is no generator state, so any sub-block of a random matrix can be drawn anywhere, in
any order, on any device, and comes out bit for bit the same.

* **Bits.** Philox4x32-10 (Salmon et al., SC'11; Random123) maps a 128-bit counter and a
  64-bit key to four 32-bit words. Key = the first 8 bytes of blake2b("seed|name"), so a
  parameter's numbers do not depend on which other parameters exist. Counter =
  (q mod 2^32, q div 2^32, k, stream) where q = j div (entries per call) and ``stream``
  separates the Gaussian and Rademacher draws. Words are held in int64 tensors (values
  < 2^32); the 32x32 -> 64-bit products are formed from 16-bit limbs of one factor (every
  partial product < 2^49), so nothing relies on signed overflow or on unsigned types
  (torch has no uint32 arithmetic on every device). On the CPU the same rounds run in NumPy's
  unsigned types, where a 32x32-bit product is one uint64 multiply: the same words, 3x faster.
* **Gaussian** (4 deviates per call). Box-Muller on the word pairs (w0, w1) and (w2, w3):
  u = (w0 + 1/2) 2^-32 in (0, 1), r = sqrt(-2 ln u); the angle's octant is w1's top three
  bits and its offset in the octant the other 29 bits (range reduction in integers, so no
  rounding of 2 pi u), reflected in odd octants so that the polynomial argument lies in
  (0, pi/4]. ln, sin and cos are this module's own float64 polynomials (an atanh series
  after an exact exponent split of the float64 bit pattern; Taylor series), made only of
  IEEE-exact operations (+, -, *, tensor / tensor, sqrt, int64 <-> float64 conversion and
  bit reinterpretation, multiplication by 0 or +-1, integer ops), each its own eager op, so there is no
  library transcendental (they differ between CPU and CUDA libraries) and no FMA
  contraction. Division is only ever tensor by tensor (CUDA turns a division by a scalar
  into a multiplication by its reciprocal). The float64 deviates (relative error < 1e-13) are
  rounded once to float32. |z| <= sqrt(2 ln 2^33) ~ 6.76.
* **sqrt** must be correctly rounded, as IEEE 754 asks. torch 2.13.0's CPU float64 ``sqrt``
  is not: on an AMD EPYC 1.25 % of random radicands came out 1 ulp from ``math.sqrt``, under
  every ``ATEN_CPU_CAPABILITY`` (so not ATen's own vector code; probably the MKL vector math
  the wheel is built with). So the CPU takes NumPy's (the hardware instruction), and every
  device's sqrt is checked once against Python's ``math.sqrt`` (:func:`_sqrt`); one that is
  not exact is an error, never a different R.
* **Rademacher** (128 signs per call): bit b of the call's 128 bits is entry 128 q + b.

Changing any of this changes every projected kernel: bump :data:`GENERATOR`, which is part
of a projected kernel's identity (``KernelOptions.to_json``), so old files are refused.
"""
from __future__ import annotations

import hashlib
import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["GENERATOR", "philox4x32", "stream_key", "gaussian_block", "rademacher_block",
           "GAUSS_PER_CALL", "SIGNS_PER_CALL"]

GENERATOR = "philox4x32-10/box-muller-f64/v1"
GAUSS_PER_CALL = 4
SIGNS_PER_CALL = 128
STREAM_GAUSSIAN, STREAM_RADEMACHER = 0, 1
# Tensor bytes follow the host's order (every CPU and GPU torch runs on is little-endian; the
# other branch of rademacher_block keeps big-endian hosts exact too).
LITTLE_ENDIAN = sys.byteorder == "little"

_MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox4x32 multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_LN2 = 0.6931471805599453
_PI_4 = 0.7853981633974483
# ln m = 2 s (1 + s^2/3 + s^4/5 + ...), s = (m-1)/(m+1), |s| <= 0.1716: 8 terms, rel. error < 1e-13
# (the deviates are rounded to float32, 6e-8, so more terms would not change the distribution).
_LOG_COEF = tuple(1.0 / (2 * i + 1) for i in range(8))
# sin a = a (1 - a^2/3! + ... - a^12/13!), cos a = 1 - a^2/2! + ... - a^14/14!, 0 < a < pi/4: error < 1e-14.
_SIN_COEF = tuple((-1.0) ** i / math.factorial(2 * i + 1) for i in range(7))
_COS_COEF = tuple((-1.0) ** i / math.factorial(2 * i) for i in range(8))
# Byte value -> its 8 bits as signs 1 - 2 b, least significant bit first (Rademacher on the CPU).
_BYTE_SIGNS = (1.0 - 2.0 * ((np.arange(256)[:, None] >> np.arange(8)) & 1)).astype(np.float32)
# Generation step on the CPU: this many Gaussian calls (4 entries each), or as many entries of
# the Rademacher stream. Large enough to amortise the per-op overhead, small enough that the
# temporaries stay in the cache (elementwise ops are memory-bound). On the CPU each op runs on
# one thread and the steps are shared among Python threads (see _generate).
CPU_CHUNK = 1 << 16


def stream_key(seed: int, name: str) -> tuple[int, int]:
    """The 64-bit Philox key (two 32-bit words) of parameter ``name`` under ``seed``."""
    digest = hashlib.blake2b(f"{int(seed)}|{name}".encode(), digest_size=8).digest()
    v = int.from_bytes(digest, "little")
    return v & _MASK32, v >> 32


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of a * m for int64 ``a`` in [0, 2^32) and a constant m < 2^32."""
    hi = (a >> 16).mul_(m)  # < 2^48
    lo = (a & 0xFFFF).mul_(m)  # < 2^48
    lo.add_((hi & 0xFFFF).bitwise_left_shift_(16))  # < 2^49
    hi.bitwise_right_shift_(16).add_(lo >> 32)
    return hi, lo.bitwise_and_(_MASK32)


def philox4x32(ctr, key: tuple[int, int], rounds: int = 10) -> list[torch.Tensor]:
    """Philox4x32-``rounds`` of the counters ``ctr`` (4 int64 tensors or ints, broadcast, each
    in [0, 2^32); the first and third must be tensors) under ``key`` (two ints < 2^32): the 4
    output words as int64 tensors. Known-answer tests: tests/test_projection.py."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = (hi1 ^ c1).bitwise_xor_(k0), lo1, (hi0 ^ c3).bitwise_xor_(k1), lo0
    return [c0, c1, c2, c3]


def _philox4x32_cpu(c0: np.ndarray, c1: np.ndarray, c2: np.ndarray, c3: int, key: tuple[int, int],
                    rounds: int = 10) -> list[np.ndarray]:
    """:func:`philox4x32` in NumPy: counters (integer arrays in [0, 2^32), broadcast; ``c3``
    an int), the 4 output words as uint64 arrays of the broadcast shape (values < 2^32). Same
    bits as the tensor version (tests/test_projection.py), 3-4x faster on the CPU.

    A 32x32-bit product is one exact uint64 multiply. The two multiplied words sit in one
    (2, ...) array X and the two xored words in Y, so that a round is five array ops: X *= M;
    H = X >> 32; H ^= Y ^ key (the new multiplied words, in swapped order); X &= 2^32 - 1
    (the new xored words). The order alternates between rounds instead of being copied back.
    """
    shape = np.broadcast_shapes(np.shape(c0), np.shape(c1), np.shape(c2))
    ones = (1,) * len(shape)
    x = np.empty((2,) + shape, np.uint64)
    x[0], x[1] = c0, c2
    y = np.empty((2,) + shape, np.uint64)
    y[0], y[1] = c3, c1
    mul = np.array([_M0, _M1], dtype=np.uint64).reshape((2,) + ones)
    muls = (mul, mul[::-1].copy())
    kk = np.empty((2,) + ones, np.uint64)
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
        odd = r & 1  # x = [c0, c2], y = [c3, c1] on even rounds; [c2, c0], [c1, c3] on odd ones
        kk[0], kk[1] = (k0, k1) if odd else (k1, k0)
        x *= muls[odd]
        h = x >> np.uint64(32)  # hi words, xored into [c2', c0'] (even) or [c0', c2'] (odd)
        h ^= y
        h ^= kk
        x &= np.uint64(_MASK32)  # lo words: [c3', c1'] (even) or [c1', c3'] (odd)
        x, y = h, x[::-1]
    if rounds % 2:
        return [x[1], y[0], x[0], y[1]]
    return [x[0], y[1], x[1], y[0]]


def _words(c0: torch.Tensor, c1: torch.Tensor, k: torch.Tensor, stream: int,
           key: tuple[int, int]) -> list[torch.Tensor]:
    """The 4 Philox words of counters (c0, c1, k, stream) as int64 tensors on the counters'
    device (NumPy's rounds on the CPU)."""
    if c0.device.type != "cpu":
        return philox4x32((c0, c1, k, stream), key)
    words = _philox4x32_cpu(c0.numpy(), c1.numpy(), k.numpy(), stream, key)
    return [torch.from_numpy(np.ascontiguousarray(w).view(np.int64)) for w in words]  # < 2^32: same bits


# Devices whose float64 sqrt was checked against math.sqrt (see _sqrt), and the lock that
# makes the check run once.
_SQRT_CHECKED: set[str] = set()
_SQRT_LOCK = threading.Lock()
# Probe radicands: the -2 ln u of 4096 Philox draws, the generator's own range (1e-9 .. 46).
_SQRT_PROBES = 4096


def _sqrt_probes() -> list[float]:
    w = _philox4x32_cpu(np.arange(_SQRT_PROBES), np.zeros(1, np.int64), np.zeros(1, np.int64), 2,
                        (0x5EED, 0x5EED))[0]
    u = (w.astype(np.float64) + 0.5) * 2.0 ** -32
    return [float(v) for v in -2.0 * np.log(u)] + [0.5, 2.0, 1e-9, 46.0]


def _check_sqrt(fn, where: str) -> None:
    """Error unless ``fn`` (float64 array -> its square roots) is correctly rounded on the
    probes, i.e. equal to Python's math.sqrt (CPython's is the C library's, which IEEE 754
    requires to be correctly rounded)."""
    probes = _sqrt_probes()
    got = fn(probes)
    bad = sum(1 for y, r in zip(probes, got) if float(r) != math.sqrt(y))
    if bad:
        raise RuntimeError(
            f"float64 sqrt on {where} is not correctly rounded ({bad} of {len(probes)} probes differ "
            f"from math.sqrt): the random projection would not be the same matrix as on other "
            f"devices. Report this with your torch/NumPy builds (philox.py, _sqrt).")


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded sqrt of the float64 tensor ``x``, in place: NumPy's on the CPU
    (torch's is not correctly rounded there, see the module notes), torch's elsewhere; either
    checked once per process and device (:func:`_check_sqrt`)."""
    where = "cpu (numpy.sqrt)" if x.device.type == "cpu" else str(x.device)
    if where not in _SQRT_CHECKED:
        with _SQRT_LOCK:
            if where not in _SQRT_CHECKED:
                if x.device.type == "cpu":
                    _check_sqrt(lambda v: np.sqrt(np.asarray(v, dtype=np.float64)).tolist(), where)
                else:
                    _check_sqrt(lambda v: torch.tensor(v, dtype=torch.float64, device=x.device).sqrt().tolist(),
                                where)
                _SQRT_CHECKED.add(where)
    if x.device.type == "cpu":
        a = x.numpy()
        np.sqrt(a, out=a)
        return x
    return x.sqrt_()


def _horner(x: torch.Tensor, coef: tuple[float, ...]) -> torch.Tensor:
    """sum_i coef[i] x^i, as separate in-place multiplies and adds (no fused multiply-add)."""
    p = x * coef[-1]
    for c in coef[-2:0:-1]:
        p.add_(c).mul_(x)
    return p.add_(coef[0])


def _log_uniform(w: torch.Tensor) -> torch.Tensor:
    """ln u for u = (2 w + 1) 2^-33 in (0, 1), int64 ``w`` in [0, 2^32), from IEEE-exact
    operations only.

    The frexp-like split 2 w + 1 = m 2^e with m in [sqrt(1/2), sqrt(2)) is done on the
    float64 bit pattern with integer ops (as in fdlibm's log), then
    ln u = (e - 33) ln 2 + ln m with ln m = 2 atanh(s), s = (m - 1)/(m + 1), |s| < 0.1716, by a
    series (the 2^-33 goes into the integer exponent, so u near 1 loses no digits)."""
    v = w * 2 + 1
    bits = v.to(torch.float64).view(torch.int64)  # exact: v < 2^53
    hx = (bits >> 32) + (0x3FF00000 - 0x3FE6A09E)
    e = ((hx >> 20) - (0x3FF + 33)).to(torch.float64)
    hx = (hx & 0x000FFFFF) + 0x3FE6A09E
    m = ((hx << 32) | (bits & _MASK32)).view(torch.float64)
    s = (m - 1.0) / (m + 1.0)  # tensor / tensor: correctly rounded everywhere
    ln_m = _horner(s * s, _LOG_COEF).mul_(s).mul_(2.0)
    return e.mul_(_LN2).add_(ln_m)


def _box_muller(w_r: torch.Tensor, w_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent N(0, 1) float64 deviates from two 32-bit words (int64 tensors)."""
    r = _sqrt(_log_uniform(w_r).mul_(-2.0))
    octant = w_a >> 29
    frac = w_a & ((1 << 29) - 1)
    frac ^= (-(octant & 1)) & ((1 << 29) - 1)  # odd octants: frac -> 2^29 - 1 - frac, a -> pi/4 - a
    a = frac.to(torch.float64).add_(0.5).mul_(2.0 ** -29 * _PI_4)  # in (0, pi/4)
    a2 = a * a
    s = _horner(a2, _SIN_COEF).mul_(a)
    c = _horner(a2, _COS_COEF)
    # angle = octant pi/4 + (a or pi/4 - a): swap sin/cos in octants 1, 2, 5, 6, then signs
    # (cos < 0 in octants 2-5, sin < 0 in 4-7). Multiplying by 0, 1 or -1 and adding a zero
    # are exact, so these selections are exact.
    swap = (((octant + 1) >> 1) & 1).to(torch.float64)
    keep = 1.0 - swap
    cos_t = (c * keep).add_(s * swap)
    sin_t = (s * keep).add_(c * swap)
    cos_t.mul_((1 - 2 * (((octant + 2) >> 2) & 1)).to(torch.float64))
    sin_t.mul_((1 - 2 * (octant >> 2)).to(torch.float64))
    return cos_t.mul_(r), sin_t.mul_(r)


def _counters(q0: int, nq: int, k0: int, nk: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q = torch.arange(q0, q0 + nq, dtype=torch.int64, device=device).unsqueeze(0)
    k = torch.arange(k0, k0 + nk, dtype=torch.int64, device=device).unsqueeze(1)
    return q & _MASK32, q >> 32, k


def _generate(fill, k0: int, k1: int, j0: int, j1: int, per_call: int, device) -> torch.Tensor:
    """R[k0:k1, j0:j1] (float32) from ``fill(q0, nq, out)``, which writes the entries of calls
    q0 .. q0 + nq - 1 of rows k0 .. k1 - 1 into ``out`` (rows, nq, per_call). On the CPU the
    calls are made in cache-sized steps (the elementwise ops are memory-bound)."""
    rows = k1 - k0
    q_lo, q_hi = j0 // per_call, -(-j1 // per_call)
    nq = q_hi - q_lo
    out = torch.empty(rows, nq, per_call, dtype=torch.float32, device=device)
    cpu = torch.device(device).type == "cpu"
    step = max(1, CPU_CHUNK * GAUSS_PER_CALL // (max(rows, 1) * per_call)) if cpu else nq
    starts = list(range(q_lo, q_hi, step))

    def run(part: list[int]) -> None:
        for q in part:
            n = min(step, q_hi - q)
            fill(q, n, out[:, q - q_lo : q - q_lo + n])

    threads = torch.get_num_threads()
    if not cpu or threads == 1 or len(starts) == 1:
        run(starts)
        return _cut(out, j0, j1, q_lo, per_call)
    # torch would split even these small float64 sqrt calls across its OpenMP threads, which on a
    # shared machine made a step 400x slower (threads waiting for each other). Instead each op
    # runs on one thread and the steps are shared among ``threads`` Python threads (torch ops
    # release the GIL; every step writes its own columns, so the result does not depend on it).
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(run, [starts[i::threads] for i in range(threads)]))
    finally:
        torch.set_num_threads(threads)
    return _cut(out, j0, j1, q_lo, per_call)


def _cut(out: torch.Tensor, j0: int, j1: int, q_lo: int, per_call: int) -> torch.Tensor:
    rows, nq, _ = out.shape
    start = j0 - q_lo * per_call
    # Contiguous: callers view tiles as (rows, ...) matrices. A copy only where the block does
    # not start and end on a call boundary (j0 or j1 not a multiple of ``per_call``).
    return out.view(rows, nq * per_call)[:, start : start + (j1 - j0)].contiguous()


def gaussian_block(seed: int, name: str, k0: int, k1: int, j0: int, j1: int,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """R[k0:k1, j0:j1] of the Gaussian stream of ``name``: float32 N(0, 1), on ``device``.
    Entry (k, j) is deviate j mod 4 of Philox call (q = j div 4, k)."""
    key = stream_key(seed, name)

    def fill(q0: int, nq: int, out: torch.Tensor) -> None:
        c0, c1, k = _counters(q0, nq, k0, k1 - k0, device)
        w = _words(c0, c1, k, STREAM_GAUSSIAN, key)
        for i, z in enumerate(_box_muller(w[0], w[1]) + _box_muller(w[2], w[3])):
            out[:, :, i].copy_(z)  # float64 -> float32: one IEEE rounding

    return _generate(fill, k0, k1, j0, j1, GAUSS_PER_CALL, device)


def rademacher_block(seed: int, name: str, k0: int, k1: int, j0: int, j1: int,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """R[k0:k1, j0:j1] of the Rademacher stream of ``name``: float32 +-1, on ``device``.
    Entry (k, j) is 1 - 2 b with b bit (j mod 32) of word (j mod 128) div 32 of call (j div 128, k)."""
    key = stream_key(seed, name)
    little = LITTLE_ENDIAN
    shifts = torch.arange(8 if little else 32, dtype=torch.uint8 if little else torch.int64, device=device)

    cpu = torch.device(device).type == "cpu"

    def fill(q0: int, nq: int, out: torch.Tensor) -> None:
        c0, c1, k = _counters(q0, nq, k0, k1 - k0, device)
        # Bytes 0-3 of a little-endian 64-bit word < 2^32 are its bits 0-31, 8 per byte: bit
        # b of the word is bit b mod 8 of byte b div 8.
        if cpu and little:
            # A table maps each byte to its 8 signs: one gather (np.take), no shifts.
            w = np.stack(_philox4x32_cpu(c0.numpy(), c1.numpy(), k.numpy(), STREAM_RADEMACHER, key), axis=2)
            signs = np.take(_BYTE_SIGNS, w.view(np.uint8).reshape(w.shape + (8,))[..., :4], axis=0)
            out.numpy()[...] = signs.reshape(out.shape)
            return
        w = torch.stack(_words(c0, c1, k, STREAM_RADEMACHER, key), dim=2)  # (rows, nq, 4)
        if little:
            # Shifting bytes moves 8x less memory than shifting int64 words (same bits).
            words = w.view(torch.uint8).view(w.shape + (8,))[..., :4]
            bits = (words.unsqueeze(-1) >> shifts) & 1  # (rows, nq, 4, 4, 8)
        else:
            bits = (w.unsqueeze(3) >> shifts) & 1  # (rows, nq, 4, 32)
        out.copy_(bits.view(out.shape).to(out.dtype).mul_(-2.0).add_(1.0))

    return _generate(fill, k0, k1, j0, j1, SIGNS_PER_CALL, device)
