"""Tests for scripts/speech_channel.py: the simulated recording channel (room, mic, gain/clip, codec).

The room's decay is measured the way acousticians do: Schroeder backward integration of the
squared IR (the energy decay curve) and a straight-line fit from -5 to -35 dB (T30), over the
reverberant part (the direct path removed), broadband or in a band (4th-order Butterworth).
Microphone curves are checked by filtering sines and measuring their level in the clip's
middle (the zero-phase filter's edge transients stay near the ends).
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from scipy import signal

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "scripts" / "speech_channel.py"
_spec = importlib.util.spec_from_file_location("speech_channel", MODULE)
sc = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("speech_channel", sc)
_spec.loader.exec_module(sc)

SR = 16000

# named tolerances, one place
TOL = {
    # T30 of a noise IR is itself random; the worst cases over 5000 (1500 for high) seeds are in brackets
    "rt60_broadband": 0.10,   # relative: T30 with hf_ratio = 1 (6.2 %)
    "rt60_mid": 0.12,         # relative: T30 of the 200-2500 Hz band (8.2 %)
    "rt60_high": 0.20,        # relative: mean T30 of 4 IRs' 7-8 kHz band vs rt60 * hf_ratio (13 %)
    "drr_db": 1e-3,           # dB: the reverberant part is scaled to the DRR exactly (float32 rounding)
    "identity": 1e-6,         # absolute: FFT convolution round trip in float32
    "convolve": 1e-5,         # relative to the output scale: FFT vs direct convolution in float32
    "level_db": 1.0,          # white noise power through reverberate(keep_level=True)
    "sine_db": 0.3,           # a filtered sine's level vs the analytic response
    "backends": 1e-5,         # numpy.fft vs scipy.fft, absolute on [-1, 1] signals
}

seeds = st.integers(0, 2**32 - 1)
signals = hnp.arrays(np.float32, st.integers(0, 3000), elements=st.floats(-1, 1, width=32))


def rng(seed):
    return np.random.default_rng(seed)


def t30(h, sr=SR):
    """RT60 from the energy decay curve of h (Schroeder), fitted from -5 to -35 dB."""
    e = np.cumsum((np.asarray(h, np.float64) ** 2)[::-1])[::-1]
    db = 10 * np.log10(e / e[0] + 1e-300)
    i = np.nonzero((db <= -5) & (db >= -35))[0]
    assert len(i) > 10, "decay curve too short to fit"
    slope = np.polyfit(i / sr, db[i], 1)[0]
    return -60.0 / slope


def band(h, lo, hi, sr=SR):
    if hi >= sr / 2:
        sos = signal.butter(6, lo, "highpass", fs=sr, output="sos")
    else:
        sos = signal.butter(4, [lo, hi], "bandpass", fs=sr, output="sos")
    return signal.sosfilt(sos, h)


def reverberant(ir):
    h = ir.astype(np.float64).copy()
    h[0] = 0.0
    return h


def sine(f, seconds=1.0, amp=0.5):
    return (amp * np.sin(2 * np.pi * f * np.arange(int(SR * seconds)) / SR)).astype(np.float32)


def level_db(y, x):
    """Level of y relative to x over the middle half of the clip (away from edge transients)."""
    n = len(x)
    mid = slice(n // 4, 3 * n // 4)
    return 10 * np.log10(np.mean(np.float64(y[mid]) ** 2) / np.mean(np.float64(x[mid]) ** 2))


def butter_db(f, fc, order, kind):
    r2k = (f / fc) ** (2 * order)
    return 10 * np.log10(r2k / (1 + r2k)) if kind == "hp" else -10 * np.log10(1 + r2k)


def word(seed, n=SR):
    """A word-like test signal: noise-excited harmonics under a bell envelope, peak 0.5."""
    r = rng(seed)
    t = np.arange(n) / SR
    f0 = r.uniform(90, 250)
    x = sum(np.sin(2 * np.pi * k * f0 * t + r.uniform(0, 6.3)) / k for k in range(1, 20))
    x = x * np.exp(-((t - t[-1] / 2) / 0.15) ** 2) + 0.01 * r.standard_normal(n)
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


# ---------------------------------------------------------------- determinism, shapes, silence

@given(seeds)
def test_same_generator_state_same_output(seed):
    x = word(seed % 1000, 4000)
    calls = {
        "ir": lambda r: sc.room_impulse_response(r),
        "mic": lambda r: sc.apply_response(x, sc.mic_response(r)),
        "gain": lambda r: sc.gain_and_clip(x, r, p_clip=0.5, p_quant=0.5),
        "chain": lambda r: sc.random_channel(x, r, p_reverb=0.7, p_mic=0.7, p_clip=0.5, p_quant=0.5),
    }
    for name, f in calls.items():
        r1, r2 = rng(seed), rng(seed)
        a, b = f(r1), f(r2)
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: same seed, different output")
        assert r1.bit_generator.state == r2.bit_generator.state, f"{name}: generator consumed differently"
    assert not np.array_equal(sc.room_impulse_response(rng(seed)), sc.room_impulse_response(rng(seed + 1)))
    assert sc.mic_response(rng(seed)) == sc.mic_response(rng(seed))


def test_no_global_rng():
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    sc.random_channel(word(0), rng(1), p_reverb=1, p_mic=1, p_clip=1, p_quant=1)
    assert np.array_equal(np.random.get_state()[1], before), "the global RNG was used"


@given(signals, seeds, st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))
def test_random_channel_length_dtype_finite_range(x, seed, p_reverb, p_mic, p_clip, p_quant):
    y = sc.random_channel(x, rng(seed), p_reverb=p_reverb, p_mic=p_mic, p_clip=p_clip, p_quant=p_quant)
    assert y.dtype == np.float32 and y.shape == x.shape, f"{y.dtype} {y.shape} for input {x.shape}"
    assert np.all(np.isfinite(y)), "NaN/Inf in the output"
    assert np.all(np.abs(y) <= 1.0), f"output peak {np.max(np.abs(y))} beyond full scale"


@settings(max_examples=10)
@given(seeds)
def test_every_stage_on_a_full_length_word(seed):
    x = word(seed % 1000)
    y = sc.random_channel(x, rng(seed), p_reverb=1, p_mic=1, p_clip=1, p_quant=1)
    assert y.dtype == np.float32 and y.shape == x.shape and np.all(np.isfinite(y))
    assert np.all(np.abs(y) <= 1.0)
    assert np.max(np.abs(y)) > 0.5, "an overdriven clip should sit near full scale"


@settings(max_examples=10)
@given(seeds, st.sampled_from([8000, 11025, 22050, 44100]))
def test_other_sample_rates(seed, sr):
    x = word(seed % 1000, sr)
    y = sc.random_channel(x, rng(seed), sr=sr, p_reverb=1, p_mic=1, p_clip=0.5, p_quant=0.5)
    assert y.dtype == np.float32 and y.shape == x.shape and np.all(np.isfinite(y)) and np.all(np.abs(y) <= 1)
    resp = sc.mic_response(rng(seed), sr)
    assert resp.lp_hz is None or resp.lp_hz < 0.9 * sr / 2, "band limit above Nyquist"
    ir = sc.room_impulse_response(rng(seed), sr, rt60=0.5)
    assert ir[0] == 1.0 and len(ir) == int(0.5 * sr) + 1


@given(seeds, st.integers(0, 20000))
def test_zeros_stay_zeros(seed, n):
    z = np.zeros(n, np.float32)
    r = rng(seed)
    outs = {
        "reverberate": sc.reverberate(z, sc.room_impulse_response(r)),
        "apply_response": sc.apply_response(z, sc.mic_response(r)),
        "gain_and_clip": sc.gain_and_clip(z, r, p_clip=1.0, p_quant=1.0),
        "random_channel": sc.random_channel(z, r, p_reverb=1, p_mic=1, p_clip=1, p_quant=1),
    }
    for name, y in outs.items():
        assert y.shape == (n,) and y.dtype == np.float32, f"{name}: {y.shape} {y.dtype}"
        assert not np.any(y), f"{name}: silence in, {np.max(np.abs(y))} out"


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="1-D"):
        sc.random_channel(np.zeros((2, 100)), rng(0))
    with pytest.raises(ValueError, match="NaN"):
        sc.random_channel(np.array([0.0, np.nan]), rng(0))
    with pytest.raises(ValueError, match="empty"):
        sc.reverberate(np.ones(10), np.zeros(0))
    with pytest.raises(ValueError, match="method"):
        sc.room_impulse_response(rng(0), method="cathedral")


# ---------------------------------------------------------------- room impulse response

@given(seeds, st.floats(*sc.RT60_S), st.floats(*sc.DRR_DB))
def test_ir_direct_path_unit_gain_at_zero_and_drr(seed, rt60, drr_db):
    ir = sc.room_impulse_response(rng(seed), rt60=rt60, drr_db=drr_db)
    assert ir.dtype == np.float32 and ir.ndim == 1 and np.all(np.isfinite(ir))
    assert ir[0] == 1.0, f"direct path {ir[0]}"
    assert np.max(np.abs(ir[1:])) < 1.0, "a reflection is as strong as the direct sound"
    first = int(round(sc.FIRST_REFLECTION_S[0] * SR))
    assert not np.any(ir[1:first]), "energy before the earliest possible reflection"
    assert len(ir) == int(rt60 * SR) + 1, f"length {len(ir)} for RT60 {rt60}"
    got = -10 * np.log10(np.sum(np.float64(ir[1:]) ** 2))
    assert abs(got - drr_db) < TOL["drr_db"], f"DRR {got:.4f} dB, asked {drr_db:.4f}"


@given(seeds, st.floats(*sc.RT60_S))
def test_ir_decay_matches_rt60_broadband(seed, rt60):
    """With the same decay in both bands, the broadband energy decay curve falls 60 dB per RT60."""
    ir = sc.room_impulse_response(rng(seed), rt60=rt60, hf_ratio=1.0)
    got = t30(reverberant(ir))
    assert abs(got / rt60 - 1) < TOL["rt60_broadband"], f"T30 {got:.3f} s, drawn RT60 {rt60:.3f} s"


@given(seeds, st.floats(*sc.RT60_S), st.floats(*sc.HF_RATIO))
def test_ir_decay_matches_rt60_mid_band(seed, rt60, hf_ratio):
    """rt60 is the mid-frequency reverberation time whatever the high-frequency ratio."""
    ir = sc.room_impulse_response(rng(seed), rt60=rt60, hf_ratio=hf_ratio)
    got = t30(band(reverberant(ir), 200, 2500))
    assert abs(got / rt60 - 1) < TOL["rt60_mid"], f"T30(0.2-2.5 kHz) {got:.3f} s, RT60 {rt60:.3f} s"


@given(seeds, st.floats(0.3, sc.RT60_S[1]))
def test_ir_high_frequencies_decay_faster(seed, rt60):
    """Above the sr/4 crossover the decay time is rt60 * hf_ratio (mean of 4 rooms: one is too noisy)."""
    r = rng(seed)
    hs = [reverberant(sc.room_impulse_response(r, rt60=rt60, hf_ratio=0.5)) for _ in range(4)]
    high = np.mean([t30(band(h, 7000, 8000)) for h in hs])
    mid = np.mean([t30(band(h, 200, 2500)) for h in hs])
    want = 0.5 * rt60
    assert abs(high / want - 1) < TOL["rt60_high"], f"T30(7-8 kHz) {high:.3f} s, want {want:.3f}"
    assert high < 0.7 * mid, f"high band {high:.3f} s does not decay faster than mid {mid:.3f} s"


def test_drawn_rooms_are_in_the_documented_ranges():
    rt, drr = [], []
    for seed in range(200):
        ir = sc.room_impulse_response(rng(seed))
        rt.append(t30(band(reverberant(ir), 200, 2500)))
        drr.append(-10 * np.log10(np.sum(np.float64(ir[1:]) ** 2)))
        assert ir[0] == 1.0 and np.max(np.abs(ir[1:])) < 1.0
    lo, hi = sc.RT60_S
    tol = TOL["rt60_mid"]
    assert lo * (1 - tol) <= min(rt) and max(rt) <= hi * (1 + tol), f"T30 {min(rt):.3f}..{max(rt):.3f} s"
    assert max(rt) - min(rt) > 0.6 * (hi - lo), "RT60 draws do not span their range"
    assert sc.DRR_DB[0] - 1e-3 <= min(drr) and max(drr) <= sc.DRR_DB[1] + 1e-3, f"DRR {min(drr)}..{max(drr)}"


def test_shoebox_variant():
    pra_missing = importlib.util.find_spec("pyroomacoustics") is None
    if pra_missing:
        with pytest.raises(ImportError):
            sc.room_impulse_response(rng(0), method="shoebox")
        return
    for seed in range(3):
        ir = sc.room_impulse_response(rng(seed), method="shoebox")
        assert ir.dtype == np.float32 and ir[0] == 1.0 and np.all(np.isfinite(ir))
        assert np.max(np.abs(ir[1:])) < 1.0


# ---------------------------------------------------------------- reverberate

@given(signals, st.integers(1, 300), st.booleans())
def test_reverberate_identity_ir_returns_input(x, length, keep_level):
    ir = np.zeros(length, np.float32)
    ir[0] = 1.0
    y = sc.reverberate(x, ir, keep_level=keep_level)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=TOL["identity"], rtol=0, err_msg="identity IR changed the input")


@given(hnp.arrays(np.float32, st.integers(1, 2000), elements=st.floats(-1, 1, width=32)),
       hnp.arrays(np.float32, st.integers(1, 500), elements=st.floats(-1, 1, width=32)))
def test_reverberate_is_cut_linear_convolution(x, ir):
    n = len(x)
    want = np.convolve(np.float64(x), np.float64(ir))[:n]
    scale = np.sum(np.abs(x)) * np.max(np.abs(ir)) + 1e-6      # bound on any output sample
    got = sc.reverberate(x, ir, keep_level=False)
    np.testing.assert_allclose(got, want, atol=TOL["convolve"] * scale, rtol=0, err_msg="not x * ir cut to n")
    norm = np.sqrt(np.sum(np.float64(ir) ** 2))
    if norm > 0:
        kept = sc.reverberate(x, ir, keep_level=True)
        np.testing.assert_allclose(kept, want / norm, atol=TOL["convolve"] * scale / norm, rtol=0)


@given(seeds)
def test_reverberate_keeps_level_and_timing(seed):
    r = rng(seed)
    ir = sc.room_impulse_response(r)
    noise = r.standard_normal(SR).astype(np.float32) * 0.1
    y = sc.reverberate(noise, ir)
    later = slice(len(ir), None)            # past the first IR length the tail is fully built up
    ratio = 10 * np.log10(np.mean(np.float64(y[later]) ** 2) / np.mean(np.float64(noise[later]) ** 2))
    assert abs(ratio) < TOL["level_db"], f"white-noise level changed by {ratio:.2f} dB"
    click = np.zeros(SR, np.float32)
    click[5000] = 1.0
    yc = sc.reverberate(click, ir)
    assert int(np.argmax(np.abs(yc))) == 5000, "the direct sound moved"
    assert np.max(np.abs(yc[:5000])) < TOL["identity"], "output before the click: not causal"


# ---------------------------------------------------------------- microphone

@pytest.mark.parametrize("fc, order", [(80, 1), (80, 2), (150, 3), (200, 2), (400, 4)])
def test_highpass_attenuates_50hz_by_the_butterworth_amount(fc, order):
    resp = sc.MicResponse(hp_hz=fc, hp_order=order, normalise=False)
    for f in (50, 1000):
        x = sine(f)
        got = level_db(sc.apply_response(x, resp), x)
        want = butter_db(f, fc, order, "hp")
        assert abs(got - want) < TOL["sine_db"], f"{f} Hz, HP {fc} Hz/{order}: {got:.2f} dB, want {want:.2f}"
    assert level_db(sc.apply_response(sine(50), resp), sine(50)) < -5.0, "50 Hz hum not attenuated"
    assert abs(level_db(sc.apply_response(sine(1000), resp), sine(1000))) < 0.5, "1 kHz not passed"


@pytest.mark.parametrize("fc, order, at_most_db", [(3400, 8, -35.0), (4000, 8, -25.0), (5000, 4, -7.0)])
def test_band_limit_attenuates_6khz(fc, order, at_most_db):
    resp = sc.MicResponse(lp_hz=fc, lp_order=order, normalise=False)
    x = sine(6000)
    got = level_db(sc.apply_response(x, resp), x)
    want = butter_db(6000, fc, order, "lp")
    assert abs(got - want) < TOL["sine_db"], f"6 kHz via LP {fc} Hz/{order}: {got:.2f} dB, want {want:.2f}"
    assert got < at_most_db
    assert abs(level_db(sc.apply_response(sine(1000), resp), sine(1000))) < 0.5, "1 kHz not passed"


@given(seeds)
def test_random_mic_response_is_applied_as_drawn(seed):
    resp = sc.mic_response(rng(seed))
    assert sc.HP_HZ[0] <= resp.hp_hz <= sc.HP_HZ[1] and resp.hp_order in sc.HP_ORDERS
    assert resp.lp_hz is None or sc.LP_NARROW_HZ[0] <= resp.lp_hz <= sc.LP_WIDE_HZ[1]
    assert len(resp.peaks) <= sc.N_PEAKS[1]
    for f in (50, 300, 1000, 3000, 6000):
        x = sine(f)
        want = float(resp.gain_db(f))
        got = level_db(sc.apply_response(x, resp), x)
        if want > -60:                      # below that, float32 rounding noise dominates the sine
            assert abs(got - want) < TOL["sine_db"], f"{f} Hz: {got:.2f} dB, response says {want:.2f}"
        else:
            assert got < -55
    band_db = resp.gain_db(np.geomspace(*sc.NORM_BAND_HZ, 64))
    assert abs(np.mean(band_db)) < 1e-9, "not normalised over the speech band"
    if resp.lp_hz is not None and resp.lp_hz <= sc.LP_NARROW_HZ[1]:
        # >= 28 dB from the low-pass; peaks (+6), tilt (+4.5) and a dip at 1 kHz take back at most ~17
        assert resp.gain_db(6000) - resp.gain_db(1000) < -10, "telephone band passes 6 kHz"


def test_drawn_responses_attenuate_hum_and_pass_1khz():
    g50, g1k, narrow = [], [], 0
    for seed in range(1000):
        resp = sc.mic_response(rng(seed))
        g50.append(float(resp.gain_db(50) - resp.gain_db(1000)))
        g1k.append(float(resp.gain_db(1000)))
        narrow += resp.lp_hz is not None and resp.lp_hz <= sc.LP_NARROW_HZ[1]
    g50, g1k = np.array(g50), np.array(g1k)
    assert np.mean(g50 <= -5) > 0.95, f"50 Hz attenuated by >= 5 dB in only {np.mean(g50 <= -5):.1%}"
    assert np.mean(np.abs(g1k) <= 6) > 0.99, "1 kHz is often far from 0 dB"
    assert 0.12 < narrow / 1000 < 0.28, f"telephone-band share {narrow / 1000:.1%}, documented 20 %"


# ---------------------------------------------------------------- gain, clipping, quantisation

@given(hnp.arrays(np.float32, st.integers(0, 2000), elements=st.floats(-100, 100, width=32)), seeds,
       st.floats(0, 1), st.floats(0, 1))
def test_gain_and_clip_stays_in_full_scale(x, seed, p_clip, p_quant):
    y = sc.gain_and_clip(x, rng(seed), p_clip=p_clip, p_quant=p_quant)
    assert y.dtype == np.float32 and y.shape == x.shape and np.all(np.isfinite(y))
    assert np.all(np.abs(y) <= 1.0), f"peak {np.max(np.abs(y)) if len(y) else 0}"
    assert np.all(y[x == 0] == 0), "a zero sample became non-zero"
    assert np.all(np.sign(y) * np.sign(x) >= 0), "a sample changed sign"


@given(seeds)
def test_unclipped_path_is_a_bounded_pure_gain(seed):
    x = word(seed % 1000)
    y = sc.gain_and_clip(x, rng(seed), p_clip=0.0, p_quant=0.0)
    g = np.dot(np.float64(y), x) / np.dot(np.float64(x), x)
    np.testing.assert_allclose(y, g * x, atol=1e-6, err_msg="not a pure gain")
    assert np.max(np.abs(y)) <= sc.HEADROOM + 1e-6
    assert 10 ** (sc.GAIN_DB[0] / 20) - 1e-6 <= g <= 10 ** (sc.GAIN_DB[1] / 20) + 1e-6, f"gain {g}"


@given(seeds)
def test_overdriven_path_clips(seed):
    x = word(seed % 1000)
    y = sc.gain_and_clip(x, rng(seed), p_clip=1.0, p_quant=0.0)
    assert np.max(np.abs(y)) > 0.9, "an overdriven clip does not reach full scale"
    g = np.max(np.abs(y)) / np.max(np.abs(x))
    assert np.max(np.abs(y - g * x)) > 0.01, "overdriven yet linear"


def test_clip_and_quantise_shares_match_the_documented_probabilities():
    x = word(0, 2000)
    clipped = quantised = 0
    for seed in range(2000):
        y = sc.gain_and_clip(x, rng(seed), p_quant=0.0)
        g = np.dot(np.float64(y), x) / np.dot(np.float64(x), x)
        clipped += np.max(np.abs(y - g * x)) > 1e-3          # not a scaled copy: clipped
        quantised += len(np.unique(sc.gain_and_clip(x, rng(seed), p_clip=0.0))) <= 255
    assert abs(clipped / 2000 - sc.P_CLIP) < 0.02, f"clipped share {clipped / 2000:.3f}, doc {sc.P_CLIP}"
    assert abs(quantised / 2000 - sc.P_QUANT) < 0.015, f"quantised share {quantised / 2000:.3f}"


@given(seeds)
def test_quantisation_is_8_bit(seed):
    x = word(seed % 1000)
    y = sc.gain_and_clip(x, rng(seed), p_clip=0.0, p_quant=1.0)
    assert len(np.unique(y)) <= 255, f"{len(np.unique(y))} levels"
    assert np.corrcoef(y, x)[0, 1] > 0.95, "quantisation destroyed the waveform"


def test_near_silence_is_not_blown_up():
    x = (1e-4 * np.sin(np.arange(SR) * 0.1)).astype(np.float32)
    y = sc.gain_and_clip(x, rng(0), p_clip=1.0, p_quant=0.0)
    assert np.max(np.abs(y)) <= 1e-4 * 10 ** (sc.MAX_DRIVE_GAIN_DB / 20) * 1.001


# ---------------------------------------------------------------- NumPy only

def test_imports_and_runs_without_scipy(tmp_path):
    """The module must work with NumPy alone; numpy.fft and scipy.fft agree to float32 rounding."""
    out = tmp_path / "y.npy"
    code = (
        "import sys, importlib.util, numpy as np\n"
        "sys.modules['scipy'] = None; sys.modules['scipy.fft'] = None\n"
        f"spec = importlib.util.spec_from_file_location('speech_channel', {str(MODULE)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['speech_channel'] = m\n"
        "spec.loader.exec_module(m)\n"
        "assert m._sfft is None\n"
        "x = np.sin(np.arange(16000) * 0.05).astype(np.float32) * 0.3\n"
        "y = m.random_channel(x, np.random.default_rng(7), p_reverb=1, p_mic=1, p_clip=0, p_quant=0)\n"
        f"np.save({str(out)!r}, y)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    x = (np.sin(np.arange(16000) * 0.05) * 0.3).astype(np.float32)
    want = sc.random_channel(x, rng(7), p_reverb=1, p_mic=1, p_clip=0, p_quant=0)
    np.testing.assert_allclose(np.load(out), want, atol=TOL["backends"], rtol=0)
