#!/usr/bin/env python3
"""Simulated recording channel for synthetic speech: room, microphone, gain, clipping, codec.

The training words come from speech synthesisers (clean, dry, full band); the
test words are Google Speech Commands, recorded by people on their phones and
laptops in their homes. The difference between the two is, to first order, a
channel: the room (reverberation), the transducer (a band-limited, coloured
frequency response), the preamplifier/ADC (level, occasional clipping) and,
rarely, a low-rate codec (8-bit or mu-law quantisation). This module simulates
that channel on a synthetic waveform; ``random_channel`` is the one call:

    room_impulse_response -> reverberate -> mic_response/apply_response -> gain_and_clip

Shapes/units:
  * a waveform ``x`` is a 1-D float array (n,), mono, in [-1, 1] full scale, at ``sr`` Hz
    (16000 unless given); every function returns float32 (n,) -- the SAME length.
  * an impulse response ``ir`` is float32 (L,), L >= 1, sample 0 is the direct path (gain 1).
  * a ``MicResponse`` is a magnitude curve: ``gain(f_hz)`` -> linear amplitude gain (float64),
    ``gain_db(f_hz)`` -> dB (20 log10). Frequencies in Hz, times in seconds, levels in dB
    (dBFS for levels relative to full scale 1.0).
  * every random choice comes from the ``numpy.random.Generator`` passed in: the output is a pure
    function of (input, generator state). No global RNG.

Properties every function keeps: finite input -> finite output (no NaN/Inf), zeros in ->
zeros out (the channel adds no signal of its own; noise is added elsewhere), output length
== input length. Filtering is done with FFTs in float32; ``scipy.fft`` is used when it is
importable (2-4x faster forward transforms than ``numpy.fft``), else ``numpy.fft``, so the
module imports and works with NumPy alone (the two backends agree to float32 rounding).

Optional: ``room_impulse_response(..., method="shoebox")`` uses the image-source method of the
PyPI package ``pyroomacoustics`` when it is installed; the default (and the only one the tests
require) is the exponentially decaying noise model.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

try:                                    # optional: faster float32 FFTs; the module works without it
    import scipy.fft as _sfft
except ImportError:                     # pragma: no cover - exercised by a subprocess test
    _sfft = None

__all__ = ["RT60_S", "DRR_DB", "HF_RATIO", "MicResponse", "room_impulse_response", "reverberate",
           "mic_response", "apply_response", "gain_and_clip", "random_channel"]

SR = 16000

# ---------------------------------------------------------------- parameter ranges (why: see docstrings)
RT60_S = (0.15, 0.9)          # reverberation time at 0.2-2.5 kHz: furnished rooms .. bare kitchens/offices
DRR_DB = (0.0, 15.0)          # direct-to-reverberant energy ratio: mic at ~1.5 m (0 dB) .. ~20 cm (15 dB)
HF_RATIO = (0.5, 1.0)         # RT60 above the 4 kHz crossover / RT60 below it (air + soft furnishing loss)
FIRST_REFLECTION_S = (0.001, 0.008)   # initial time gap: desk/table/nearest wall
MIXING_S = (0.02, 0.06)       # end of the early reflections; the diffuse tail has built up by then
MIXING_MAX_RT60 = 0.15        # ... but at most 0.15 RT60: short RT60 = small room = short mixing time
N_EARLY = (4, 10)             # discrete early reflections before the mixing time (inclusive range)

HP_HZ = (80.0, 400.0)         # microphone/preamp high-pass corner (log-uniform)
HP_ORDERS = (1, 2, 3, 4)      # Butterworth order: 6 dB/oct (coupling capacitor) .. 24 dB/oct (phone DSP)
LP_KINDS = ("full", "wide", "narrow")
LP_P = (0.4, 0.4, 0.2)        # full band 8 kHz / wideband codec / telephone-like band
LP_WIDE_HZ = (5000.0, 7500.0)
LP_NARROW_HZ = (3400.0, 4000.0)
LP_ORDERS = {"wide": (4, 8), "narrow": (8, 8)}   # inclusive range of Butterworth orders
TILT_DB_PER_OCT = (-1.5, 1.5) # spectral tilt about 1 kHz, applied only between TILT_BAND_HZ
TILT_BAND_HZ = (250.0, 8000.0)  # so it stays within +-4.5 dB (modest, see mic_response)
N_PEAKS = (0, 3)              # inclusive range of peaking resonances
PEAK_HZ = (200.0, 6000.0)     # log-uniform centre frequency
PEAK_DB = (-6.0, 6.0)
PEAK_Q = (0.7, 4.0)           # log-uniform
NORM_BAND_HZ = (300.0, 3400.0)  # the response is normalised to 0 dB mean over this speech band

GAIN_DB = (-10.0, 10.0)       # recording level relative to the input, when not clipping
HEADROOM = 0.99               # peak after the gain, when not clipping (the recordist's / AGC's margin)
DRIVE_DB = (1.0, 12.0)        # peak over full scale when a clip is overdriven
MAX_DRIVE_GAIN_DB = 30.0      # an overdrive never amplifies by more: near-silence is not blown up
SOFT_SHARE = 0.5              # share of overdriven clips that soft-clip (the rest hard-clip)
KNEE = (0.5, 0.9)             # soft clipper: linear below the knee, tanh saturation above
P_CLIP = 0.05                 # share of clips overdriven (clipped)
P_QUANT = 0.03                # share of clips through an 8-bit codec
MU = 255.0                    # G.711 mu-law

P_REVERB = 0.5                # share of clips with a room
P_MIC = 0.8                   # share of clips with a coloured / band-limited microphone

MIC_PAD = 2048                # zeros (128 ms) after a clip before zero-phase filtering: no wrap-around

_LN1E3 = math.log(1e3)        # amplitude decays by 60 dB (1e-3) over one RT60


# ---------------------------------------------------------------- helpers

def _as_signal(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {x.shape}")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise ValueError("waveform has NaN or Inf samples")
    return x


@functools.lru_cache(maxsize=256)
def _fast_len(n: int) -> int:
    """The smallest length >= n whose FFT is fast (2^a 3^b 5^c, or scipy's choice)."""
    if _sfft is not None:
        return int(_sfft.next_fast_len(n, real=True))
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35 << max(0, (-(-n // p35) - 1).bit_length())   # times the smallest power of 2 reaching n
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _rfft(x, n):
    return _sfft.rfft(x, n, workers=1) if _sfft is not None else np.fft.rfft(x, n)


def _irfft(spec, n):
    return _sfft.irfft(spec, n, workers=1) if _sfft is not None else np.fft.irfft(spec, n)


# ---------------------------------------------------------------- room

def room_impulse_response(rng: np.random.Generator, sr: int = SR, *, rt60: float | None = None,
                          drr_db: float | None = None, hf_ratio: float | None = None,
                          method: str = "noise") -> np.ndarray:
    """A random room impulse response (L,) float32: ir[0] == 1 is the direct path.

    Model (``method="noise"``, the default): the direct sound, then N_EARLY discrete early
    reflections, then a diffuse tail of Gaussian noise whose amplitude decays exponentially,
    ``exp(-ln(1000) t / RT60)`` (energy down 60 dB after RT60 seconds: Polack's statistical
    model of a diffuse field). Times are measured from the direct sound, which sits at sample 0
    with gain 1 (the propagation delay and 1/r loss are dropped: the word is not moved and its
    direct sound keeps its level).

    * RT60 ~ U(RT60_S) = 0.15 .. 0.9 s: furnished bedrooms and living rooms are 0.3-0.6 s,
      small treated offices ~0.2 s, kitchens/bathrooms/bare rooms up to ~1 s. Below 0.15 s the
      room is near anechoic (cars, closets) and the clean path (no reverb) already covers it.
    * Frequency-dependent decay: the tail noise is split at sr/4 (4 kHz at 16 kHz) into two
      complementary bands (binomial low-pass [1, 2, 1]/4 and its complement: they sum to the
      noise exactly); the low band decays with RT60, the high band with RT60 * hf_ratio,
      hf_ratio ~ U(HF_RATIO) = 0.5 .. 1 (air absorption and soft furnishings absorb high
      frequencies more: measured rooms have T60(4-8 kHz) at roughly 0.5-0.9 of T60(500 Hz)).
      ``rt60`` is therefore the mid-frequency reverberation time (what Schroeder integration of
      the IR band-passed to 0.2-2.5 kHz measures).
    * Early reflections: the first at FIRST_REFLECTION_S = 1..8 ms (a desk under a phone or
      laptop, the nearest wall), the rest uniform up to the mixing time MIXING_S = 20..60 ms
      (at most 0.15 RT60: a short RT60 means a small room, with a short mixing time), random
      signs; each carries the energy the decaying tail would have in its share of the early
      window, so the energy decay curve stays exponential on average. The tail fades in
      linearly from the first reflection to the mixing time (the diffuse field building up).
    * DRR ~ U(DRR_DB) = 0 .. 15 dB: the reverberant part (everything after sample 0) is scaled
      to an energy of 10**(-DRR/10) of the direct sound. 15 dB is a phone ~20 cm from the
      mouth, 0 dB a laptop near the room's critical distance (~1-1.5 m in a home); farther
      (negative DRR) is rare for a person recording their own command.

    The IR is cut where the slowest band has decayed by 60 dB: L = floor(RT60 * sr) + 1.
    Explicit ``rt60``/``drr_db``/``hf_ratio`` override the draws (the rng still supplies the
    rest), e.g. to test the decay.

    ``method="shoebox"``: if ``pyroomacoustics`` is importable, the image-source method in a
    random shoebox room (3-8 x 3-8 x 2.4-3.5 m, wall absorption from Sabine's formula for the
    drawn RT60, source and mic >= 0.5 m from the walls and 0.2-1.2 m apart), cut to start at the
    direct path and scaled so it has gain 1; the DRR then follows from the geometry (``drr_db``
    and ``hf_ratio`` are ignored). Raises ImportError when the package is missing.
    """
    rt60 = float(rng.uniform(*RT60_S)) if rt60 is None else float(rt60)
    if not 0.0 < rt60 <= 10.0:
        raise ValueError(f"rt60 {rt60} s is outside (0, 10]")
    if method == "shoebox":
        return _shoebox_ir(rng, sr, rt60)
    if method != "noise":
        raise ValueError(f"unknown method {method!r} (use 'noise' or 'shoebox')")
    drr_db = float(rng.uniform(*DRR_DB)) if drr_db is None else float(drr_db)
    hf_ratio = float(rng.uniform(*HF_RATIO)) if hf_ratio is None else float(hf_ratio)
    if not 0.0 < hf_ratio <= 1.0:
        raise ValueError(f"hf_ratio {hf_ratio} is outside (0, 1]")
    t_first = float(rng.uniform(*FIRST_REFLECTION_S))
    t_mix = min(float(rng.uniform(*MIXING_S)), MIXING_MAX_RT60 * rt60)
    n_early = int(rng.integers(N_EARLY[0], N_EARLY[1] + 1))

    length = int(rt60 * sr) + 1
    i_first = max(1, int(round(t_first * sr)))
    i_mix = max(i_first + 1, int(round(t_mix * sr)))
    if length <= i_mix + 1:             # very short rooms: at least a few ms of tail
        length = i_mix + 2
    t = np.arange(length, dtype=np.float32) * np.float32(1.0 / sr)
    noise = rng.standard_normal(length, dtype=np.float32)
    # binomial [1, 2, 1]/4 low-pass (amplitude cos^2(pi f / sr): -6 dB at sr/4); its complement: the high band
    low = 0.5 * noise
    low[1:] += 0.25 * noise[:-1]
    low[:-1] += 0.25 * noise[1:]
    high = noise - low
    env_low = np.exp(t * np.float32(-_LN1E3 / rt60))
    env_high = np.exp(t * np.float32(-_LN1E3 / (rt60 * hf_ratio)))
    ir = low * env_low + high * env_high
    ramp = np.clip((np.arange(length, dtype=np.float32) - i_first) / np.float32(i_mix - i_first), 0.0, 1.0)
    ir *= ramp                          # zero before the first reflection, full at the mixing time

    # early reflections: the first at i_first, the others uniform in (i_first, i_mix)
    where = np.concatenate([[i_first], rng.integers(i_first + 1, i_mix + 1, size=n_early - 1)])
    sign = np.where(rng.random(n_early) < 0.5, -1.0, 1.0)
    amp = sign * rng.uniform(0.5, 1.0, size=n_early) * math.sqrt((i_mix - i_first) / n_early)
    np.add.at(ir, where, (amp * env_low[where]).astype(np.float32))

    ir[0] = 0.0
    energy = float(np.dot(ir, ir))
    ir *= np.float32(math.sqrt(10.0 ** (-drr_db / 10.0) / energy))
    ir[0] = 1.0
    return ir


def _shoebox_ir(rng, sr, rt60):
    import pyroomacoustics as pra     # optional dependency: ImportError when missing, by design

    dim = np.array([rng.uniform(3.0, 8.0), rng.uniform(3.0, 8.0), rng.uniform(2.4, 3.5)])
    absorption, max_order = pra.inverse_sabine(rt60, dim)
    margin = 0.5
    src = np.array([rng.uniform(margin, d - margin) for d in dim])
    for _ in range(100):                # a mic 0.2..1.2 m from the talker, inside the room
        direction = rng.standard_normal(3)
        mic = src + direction / np.linalg.norm(direction) * rng.uniform(0.2, 1.2)
        if np.all(mic > margin) and np.all(mic < dim - margin):
            break
    else:
        mic = np.clip(src + np.array([0.3, 0.0, 0.0]), margin, dim - margin)
    room = pra.ShoeBox(dim, fs=sr, materials=pra.Material(absorption), max_order=min(int(max_order), 20))
    room.add_source(src)
    room.add_microphone(mic)
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], dtype=np.float64)
    delay = np.linalg.norm(mic - src) / pra.constants.get("c") * sr
    centre = int(round(delay)) + pra.constants.get("frac_delay_length") // 2
    lo, hi = max(0, centre - 4), min(len(rir), centre + 5)
    d = lo + int(np.argmax(np.abs(rir[lo:hi])))   # the direct path's peak sample
    ir = rir[d:] / rir[d]
    return np.nan_to_num(ir).astype(np.float32)


def reverberate(x, ir, keep_level: bool = True) -> np.ndarray:
    """x (n,) convolved with the room ir (L,), the first n samples, float32 (n,).

    Linear (not circular) convolution by FFT: the transform length is >= n + L - 1, so no tail
    wraps onto the word; the tail past the end of x is cut (the clip is a fixed window). ir[0] is
    the direct path, so the word is not delayed. ``keep_level`` divides by the IR's energy gain
    sqrt(sum(ir**2)) so a broadband signal keeps its power (speech, not white, lands within about
    1 dB) -- a linear scaling, so the channel stays LTI and composable; with keep_level=False the
    direct sound keeps its level and the reverberant energy adds to it (up to +3 dB at 0 dB DRR).
    """
    x = _as_signal(x)
    ir = _as_signal(ir)
    n, m = len(x), len(ir)
    if m == 0:
        raise ValueError("empty impulse response")
    if n == 0:
        return np.zeros(0, np.float32)
    size = _fast_len(n + m - 1)
    y = _irfft(_rfft(x, size) * _rfft(ir, size), size)[:n]
    if keep_level:
        e = float(np.dot(ir, ir))
        if e > 0.0:
            y = y * np.float32(1.0 / math.sqrt(e))
    return np.ascontiguousarray(y, dtype=np.float32)


# ---------------------------------------------------------------- microphone

@dataclass(frozen=True)
class MicResponse:
    """A microphone/device magnitude response: high-pass x low-pass x tilt x peaks, normalised.

    hp_hz/lp_hz: Butterworth corners (None: no such filter), orders in 6 dB/octave steps;
    tilt_db_per_oct: slope about 1 kHz, between TILT_BAND_HZ only; peaks: (centre Hz, gain dB, Q)
    analogue peaking-EQ sections; normalise: shift so the mean dB gain over NORM_BAND_HZ is 0.
    """
    sr: int = SR
    hp_hz: float | None = None
    hp_order: int = 2
    lp_hz: float | None = None
    lp_order: int = 8
    tilt_db_per_oct: float = 0.0
    peaks: tuple = ()
    normalise: bool = True

    def _power(self, f, dtype=np.float64):
        """Linear power gain |H(f)|^2 before normalisation (rational in f: no logs but the tilt's)."""
        f = np.abs(np.asarray(f, dtype=dtype))
        p = np.ones(f.shape, dtype)
        f2 = f * f
        if self.hp_hz is not None:      # |H|^2 = r^2k / (1 + r^2k), r = f / fc
            r2k = _int_power(f2 * dtype(1.0 / self.hp_hz ** 2), self.hp_order)
            p *= r2k / (1.0 + r2k)
        if self.lp_hz is not None:      # |H|^2 = 1 / (1 + r^2k)
            p /= 1.0 + _int_power(f2 * dtype(1.0 / self.lp_hz ** 2), self.lp_order)
        for fc, g_db, q in self.peaks:  # analogue peaking EQ: H(s) = (s^2 + sA/Q + 1) / (s^2 + s/(AQ) + 1)
            a = 10.0 ** (g_db / 40.0)
            w2 = f2 * dtype(1.0 / fc ** 2)
            d = (1.0 - w2) ** 2
            p *= (d + w2 * dtype((a / q) ** 2)) / (d + w2 * dtype((1.0 / (a * q)) ** 2))
        if self.tilt_db_per_oct:        # 10^(tilt log2(f / 1 kHz) / 10) = (f / 1 kHz)^(tilt / (10 log10 2))
            lo, hi = TILT_BAND_HZ
            p *= (np.clip(f, lo, hi) * dtype(1e-3)) ** dtype(self.tilt_db_per_oct / (10.0 * math.log10(2.0)))
        return p

    def _offset_db(self):
        if not self.normalise:
            return 0.0
        return float(np.mean(10.0 * np.log10(self._power(np.geomspace(*NORM_BAND_HZ, 64)))))

    def gain_db(self, f) -> np.ndarray:
        """The response at frequencies f (Hz), in dB (-inf where it is 0, e.g. DC with a high-pass)."""
        with np.errstate(divide="ignore"):
            return 10.0 * np.log10(self._power(f)) - self._offset_db()

    def gain(self, f, dtype=np.float64) -> np.ndarray:
        """The response at frequencies f (Hz), linear amplitude (apply_response asks for float32)."""
        return np.sqrt(self._power(f, dtype)) * dtype(10.0 ** (-self._offset_db() / 20.0))


def _int_power(r, k):
    """r ** k for a small integer k >= 1 by multiplication (np.power's general path is slower)."""
    out = r
    for _ in range(k - 1):
        out = out * r
    return out


def mic_response(rng: np.random.Generator, sr: int = SR) -> MicResponse:
    """A random phone / laptop / headset microphone magnitude response (MicResponse).

    Model: the product of
    * a Butterworth high-pass, corner log-uniform in HP_HZ = 80..400 Hz, order 1..4: small
      capsules, coupling capacitors and the wind/handling-noise high-pass of phone DSP remove
      the low end; cheap laptop mics start as high as 300-400 Hz;
    * a band limit: full band (none, 40 %), a wideband codec / cheap ADC low-pass at 5-7.5 kHz
      (order 4-8, 40 %), or telephone-like 3.4-4 kHz (order 8, 20 %: 8 kHz-sampled paths,
      Bluetooth headsets); corners at or above 0.9 * Nyquist are dropped;
    * a spectral tilt of U(-1.5, 1.5) dB/octave about 1 kHz, flat outside 250 Hz..8 kHz, so the
      tilt alone stays within +-3 dB at 250 Hz and +-4.5 dB at 8 kHz: enough for bright MEMS vs
      dull electret capsules without undoing the high-pass (a steeper tilt would boost what the
      high-pass removed);
    * 0..3 peaking resonances, centre log-uniform 200..6000 Hz, gain U(-6, 6) dB, Q 0.7..4
      (log-uniform): case cavities, acoustic ports, the presence peak of MEMS mics;
    then shifted so the mean dB gain over 300..3400 Hz is 0 (level-neutral on speech; the level
    is randomised later by gain_and_clip). Phase is ignored (zero-phase filtering, see
    apply_response): the MFCC front-end discards it.
    """
    nyq = sr / 2.0
    hp_hz = float(math.exp(rng.uniform(math.log(HP_HZ[0]), math.log(HP_HZ[1]))))
    hp_order = int(rng.choice(HP_ORDERS))
    kind = LP_KINDS[int(rng.choice(len(LP_KINDS), p=LP_P))]
    lp_hz, lp_order = None, 8
    if kind != "full":
        lp_hz = float(rng.uniform(*(LP_WIDE_HZ if kind == "wide" else LP_NARROW_HZ)))
        lp_order = int(rng.integers(LP_ORDERS[kind][0], LP_ORDERS[kind][1] + 1))
        if lp_hz >= 0.9 * nyq:
            lp_hz = None
    if hp_hz >= 0.5 * (lp_hz or nyq):   # only at very low sample rates
        hp_hz = None
    tilt = float(rng.uniform(*TILT_DB_PER_OCT))
    n_peaks = int(rng.integers(N_PEAKS[0], N_PEAKS[1] + 1))
    fc = np.exp(rng.uniform(math.log(PEAK_HZ[0]), math.log(min(PEAK_HZ[1], 0.9 * nyq)), size=n_peaks))
    g_db = rng.uniform(*PEAK_DB, size=n_peaks)
    q = np.exp(rng.uniform(math.log(PEAK_Q[0]), math.log(PEAK_Q[1]), size=n_peaks))
    peaks = tuple((float(a), float(b), float(c)) for a, b, c in zip(fc, g_db, q))
    return MicResponse(sr=int(sr), hp_hz=hp_hz, hp_order=hp_order, lp_hz=lp_hz, lp_order=lp_order,
                       tilt_db_per_oct=tilt, peaks=peaks)


def apply_response(x, response: MicResponse) -> np.ndarray:
    """x (n,) filtered by the magnitude response, float32 (n,).

    Zero-phase filtering in the frequency domain: x is zero-padded by MIC_PAD (128 ms) samples,
    transformed, multiplied by response.gain on the FFT grid and transformed back, so no delay
    and no wrap-around (the longest ringing, a 4th-order 80 Hz high-pass, dies well within 128
    ms). A real microphone is minimum-phase, not zero-phase; the difference is a few ms of group
    delay at the band edges, invisible to 25 ms MFCC frames.
    """
    x = _as_signal(x)
    n = len(x)
    if n == 0:
        return np.zeros(0, np.float32)
    size = _fast_len(n + MIC_PAD)
    g = response.gain(np.arange(size // 2 + 1, dtype=np.float32) * np.float32(response.sr / size), np.float32)
    y = _irfft(_rfft(x, size) * g, size)[:n]
    return np.ascontiguousarray(y, dtype=np.float32)


# ---------------------------------------------------------------- preamp / ADC / codec

def _soft_clip(y, knee):
    """Linear below the knee, knee + (1 - knee) tanh(excess / (1 - knee)) above: slope 1 at the
    knee (continuous), saturating at 1 (never beyond)."""
    a = np.abs(y)
    over = a > knee
    out = y.copy()
    out[over] = np.sign(y[over]) * (knee + (1.0 - knee) * np.tanh((a[over] - knee) / (1.0 - knee)))
    return out


def gain_and_clip(x, rng: np.random.Generator, p_clip: float = P_CLIP,
                  p_quant: float = P_QUANT) -> np.ndarray:
    """x at a random recording level, sometimes clipped, rarely 8-bit coded; float32 (n,) in [-1, 1].

    Model of the preamp, ADC and codec:
    * with probability 1 - p_clip (default 95 %) a clean level: gain U(GAIN_DB) = -10..+10 dB,
      but capped so the peak stays <= HEADROOM (0.99): recordists and phone AGCs avoid clipping,
      and Speech Commands clips are mostly unclipped;
    * with probability p_clip (default 5 %) overdriven: the gain puts the peak DRIVE_DB = 1..12 dB
      over full scale (never amplifying by more than MAX_DRIVE_GAIN_DB = 30 dB, so near-silent
      clips are not blown up to full scale), then half hard-clip at +-1 (ADC saturation) and half
      soft-clip (a saturating analogue stage: linear below a knee at 0.5..0.9, tanh above);
    * always limited to [-1, 1] at the end (the ADC's range), whatever the input's range;
    * with probability p_quant (default 3 %) an 8-bit codec: half 8-bit linear (255 levels, old
      or cheap recorders), half 8-bit G.711 mu-law (mu = 255, telephony), both mid-tread so 0 stays 0.
    The same number of random draws is taken on every call, whatever the input.
    """
    x = _as_signal(x)
    u_clip, u_soft, u_quant, u_kind = rng.random(4)
    gain_db = rng.uniform(*GAIN_DB)
    drive_db = rng.uniform(*DRIVE_DB)
    knee = rng.uniform(*KNEE)
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak == 0.0:
        return np.zeros(len(x), np.float32)
    if u_clip < p_clip:
        g = min(10.0 ** (drive_db / 20.0) / peak, 10.0 ** (MAX_DRIVE_GAIN_DB / 20.0))
        y = x * np.float32(g)
        if u_soft < SOFT_SHARE:
            y = _soft_clip(y, np.float32(knee))
    else:
        g = min(10.0 ** (gain_db / 20.0), HEADROOM / peak)
        y = x * np.float32(g)
    y = np.clip(y, -1.0, 1.0)
    if u_quant < p_quant:
        if u_kind < 0.5:
            y = np.round(y * 127.0) / 127.0
        else:
            c = np.sign(y) * np.log1p(MU * np.abs(y)) / math.log1p(MU)
            c = np.round(c * 127.0) / 127.0
            y = np.sign(c) * np.expm1(np.abs(c) * math.log1p(MU)) / MU
        y = np.clip(y, -1.0, 1.0)
    return y.astype(np.float32)


# ---------------------------------------------------------------- the chain

def random_channel(x, rng: np.random.Generator, sr: int = SR, p_reverb: float = P_REVERB,
                   p_mic: float = P_MIC, p_clip: float = P_CLIP, p_quant: float = P_QUANT) -> np.ndarray:
    """x through a random recording channel, float32 (n,) in [-1, 1]: room -> mic -> preamp/ADC.

    The stages in their physical order, each present with its own probability:
    * p_reverb = 0.5: a room (room_impulse_response + reverberate, level kept). Half the clips
      stay dry: Speech Commands has many close-talk phone recordings, and the model must keep
      seeing clean words too;
    * p_mic = 0.8: a coloured, band-limited microphone (mic_response + apply_response). Most
      real devices differ audibly from a flat synthesiser output; 20 % stay flat;
    * always gain_and_clip (level, the ADC's [-1, 1]), which overdrives p_clip = 5 % of clips
      and 8-bit codes p_quant = 3 %.
    The decisions are drawn first, then each stage's parameters, so the result is a pure
    function of (x, rng state). Zeros in -> zeros out. Noise is not added here: add it after
    (sensor/ADC noise) or before (room noise, which the room and mic would colour too).
    """
    x = _as_signal(x)
    u_reverb, u_mic = rng.random(2)
    y = x
    if u_reverb < p_reverb:
        y = reverberate(y, room_impulse_response(rng, sr))
    if u_mic < p_mic:
        y = apply_response(y, mic_response(rng, sr))
    return gain_and_clip(y, rng, p_clip=p_clip, p_quant=p_quant)


if __name__ == "__main__":                # a quick timing: python scripts/speech_channel.py
    import time

    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    word = (0.3 * np.sin(2 * np.pi * 220 * t) * np.exp(-((t - 0.5) / 0.15) ** 2)).astype(np.float32)
    for label, kw in (("whole chain, every stage", dict(p_reverb=1.0, p_mic=1.0, p_clip=0.5, p_quant=0.5)),
                      ("default probabilities", {})):
        for _ in range(20):
            random_channel(word, rng, **kw)
        reps = 300
        t0 = time.perf_counter()
        for _ in range(reps):
            random_channel(word, rng, **kw)
        print(f"{label}: {(time.perf_counter() - t0) / reps * 1e3:.3f} ms per 1 s clip "
              f"({'scipy.fft' if _sfft is not None else 'numpy.fft'})")
