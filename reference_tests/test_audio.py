"""Tests for qz/audio.py: the WAV reader/writer, the resampler and the MFCC front-end.

WAV files are built byte by byte here (``wav_bytes``), so each format case
is independent of the writer under test. Every malformed file must raise
AudioError naming the path, never another exception; a hypothesis fuzz test
mutates and truncates valid files to make sure of it.
"""
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from qz import audio
from qz.audio import AudioError

DATA = Path(__file__).resolve().parent.parent / "data"

# named tolerances, one place
TOL = {
    "resample_vs_scipy": 1e-5,   # same filter design as resample_poly; float32 output
    "tone_amplitude": 0.01,      # relative amplitude change of an in-band tone
    "stopband_db": -40.0,        # energy above the new Nyquist after resampling, relative
    "logmel_8k_vs_16k": 0.05,    # nats, a 1 kHz tone recorded at 8 vs 16 kHz
    "mfcc_vs_dct": 1e-4,         # float32 MFCC vs scipy's DCT of float32 log-mel
    "float16_row": 2e-3,         # relative: stored float16 feature row vs recomputed
}

PCM, FLOAT, EXT = 1, 3, 0xFFFE


def chunk(cid, body):
    return cid + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) & 1 else b"")


def fmt_body(code, channels, rate, bits, ext_code=None, valid_bits=None):
    width = (bits + 7) // 8
    body = struct.pack("<HHIIHH", code, channels, rate, rate * channels * width, channels * width, bits)
    if code == EXT:
        guid = struct.pack("<H", ext_code) + audio._GUID_TAIL
        body += struct.pack("<HHI", 22, valid_bits or bits, 0) + guid
    return body


def wav_bytes(data, code=PCM, channels=1, rate=16000, bits=16, before=(), between=(), **ext):
    """A RIFF/WAVE file: extra chunks `before` fmt and `between` fmt and data."""
    body = b"WAVE" + b"".join(before) + chunk(b"fmt ", fmt_body(code, channels, rate, bits, **ext))
    body += b"".join(between) + chunk(b"data", data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def write(tmp_path, raw, name="x.wav"):
    p = tmp_path / name
    p.write_bytes(raw)
    return p


def read(tmp_path, raw):
    x, sr = audio.read_wav(write(tmp_path, raw))
    assert x.dtype == np.float32 and x.ndim == 1, f"read_wav returned {x.dtype} {x.shape}"
    return x, sr


def tone(freq, sr, seconds=1.0, amp=0.5):
    return amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)


# ---------------------------------------------------------------- round trip

@given(st.lists(st.floats(-1.5, 1.5), min_size=1, max_size=300), st.sampled_from([8000, 16000, 44100, 96000]))
def test_write_read_round_trip(tmp_path_factory, values, rate):
    p = tmp_path_factory.mktemp("rt") / "a.wav"
    x = np.array(values)
    audio.write_wav(p, x, rate)
    y, sr = audio.read_wav(p)
    assert sr == rate, f"rate {sr} != {rate}"
    np.testing.assert_array_equal(y, audio.quantize16(x), err_msg="read(write(x)) != quantize16(x)")
    assert np.all(np.abs(y - np.clip(x, -1, 1)) <= 1 / 32768 + 1e-12), "16-bit quantisation error > 1 LSB"
    first = p.read_bytes()
    audio.write_wav(p, y, rate)
    assert p.read_bytes() == first, (
        "write(read(write(x))) is not byte-identical: quantize16 is not idempotent")


def test_write_wav_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="1-D"):
        audio.write_wav(tmp_path / "a.wav", np.zeros((2, 3)), 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        audio.write_wav(tmp_path / "a.wav", np.zeros(3), 0)


# ---------------------------------------------------------------- formats

def test_pcm8_is_unsigned(tmp_path):
    x, _ = read(tmp_path, wav_bytes(bytes([0, 128, 255, 64]), bits=8))
    np.testing.assert_array_equal(x, [-1.0, 0.0, 127 / 128, -0.5], err_msg="8-bit PCM")


def test_pcm16(tmp_path):
    x, _ = read(tmp_path, wav_bytes(np.array([-32768, 0, 32767, 16384], "<i2").tobytes()))
    np.testing.assert_array_equal(x, [-1.0, 0.0, 32767 / 32768, 0.5], err_msg="16-bit PCM")


def test_pcm24_sign_extension(tmp_path):
    vals = [-(1 << 23), -1, 0, 1, (1 << 23) - 1, 1 << 22]
    raw = b"".join(struct.pack("<i", v)[:3] for v in vals)
    x, _ = read(tmp_path, wav_bytes(raw, bits=24))
    np.testing.assert_allclose(x, np.array(vals) / (1 << 23), rtol=0, atol=1e-7, err_msg="24-bit PCM")


def test_pcm32(tmp_path):
    vals = np.array([-(1 << 31), -(1 << 30), 0, (1 << 31) - 1], "<i4")
    x, _ = read(tmp_path, wav_bytes(vals.tobytes(), bits=32))
    np.testing.assert_allclose(x, vals / 2.0**31, atol=1e-7, err_msg="32-bit PCM")


@pytest.mark.parametrize("bits, dtype", [(32, "<f4"), (64, "<f8")])
def test_ieee_float(tmp_path, bits, dtype):
    vals = np.array([-0.75, 0.0, 0.123456, 1.0, 1.5, -3.0], dtype)
    x, _ = read(tmp_path, wav_bytes(vals.tobytes(), code=FLOAT, bits=bits))
    np.testing.assert_allclose(x, np.clip(vals, -1, 1), atol=1e-7,
                               err_msg=f"float{bits} (clipped to [-1, 1])")


def test_float_nan_rejected(tmp_path):
    p = write(tmp_path, wav_bytes(np.array([0.1, np.nan], "<f4").tobytes(), code=FLOAT, bits=32))
    with pytest.raises(AudioError, match="NaN"):
        audio.read_wav(p)


@pytest.mark.parametrize("sub, bits, valid, raw, want", [
    (PCM, 16, 16, np.array([16384, -16384], "<i2").tobytes(), [0.5, -0.5]),
    (PCM, 24, 20, b"\x00\x00\x40" + b"\x00\x00\xc0", [0.5, -0.5]),      # 20 valid bits, left-justified
    (FLOAT, 32, 32, np.array([0.25, -0.5], "<f4").tobytes(), [0.25, -0.5]),
])
def test_extensible(tmp_path, sub, bits, valid, raw, want):
    x, _ = read(tmp_path, wav_bytes(raw, code=EXT, bits=bits, ext_code=sub, valid_bits=valid))
    np.testing.assert_allclose(x, want, atol=1e-7, err_msg=f"extensible sub-format {sub}, {bits} bits")


def test_extensible_unknown_guid(tmp_path):
    body = fmt_body(EXT, 1, 16000, 16, ext_code=PCM)[:-14] + b"\x01" * 14
    raw = (b"RIFF" + struct.pack("<I", 4 + 8 + len(body) + 8 + 2) + b"WAVE" + chunk(b"fmt ", body)
           + chunk(b"data", b"\0\0"))
    with pytest.raises(AudioError, match="GUID"):
        audio.read_wav(write(tmp_path, raw))


def test_stereo_and_multichannel_are_averaged(tmp_path):
    stereo = np.array([[16384, -8192], [0, 32767]], "<i2")                   # (frames, channels)
    x, _ = read(tmp_path, wav_bytes(stereo.tobytes(), channels=2))
    np.testing.assert_allclose(x, stereo.mean(1) / 32768, atol=1e-7, err_msg="stereo mean")
    six = np.arange(12, dtype="<f4").reshape(2, 6) / 20
    x, _ = read(tmp_path, wav_bytes(six.tobytes(), code=FLOAT, bits=32, channels=6))
    np.testing.assert_allclose(x, six.mean(1), atol=1e-7, err_msg="6-channel mean")


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 96000, 192000])
def test_any_rate(tmp_path, rate):
    x, sr = read(tmp_path, wav_bytes(np.zeros(10, "<i2").tobytes(), rate=rate))
    assert sr == rate and len(x) == 10, f"rate {rate}: got {sr}, {len(x)} samples"


def test_odd_and_unknown_chunks_are_skipped(tmp_path):
    pcm = np.array([1000, -2000, 3000], "<i2").tobytes()
    raw = wav_bytes(pcm, before=[chunk(b"LIST", b"INFOISFT\x05\x00\x00\x00qz01\x00x")],   # odd size: pad byte
                    between=[chunk(b"junk", b"abc"), chunk(b"fact", b"\x03\x00\x00\x00")])
    assert len(chunk(b"junk", b"abc")) == 12, "test setup: odd chunk must carry a pad byte"
    x, _ = read(tmp_path, raw)
    np.testing.assert_array_equal(x, np.array([1000, -2000, 3000]) / 32768, err_msg="after LIST/odd chunks")


def test_partial_trailing_frame_is_dropped(tmp_path):
    x, _ = read(tmp_path, wav_bytes(np.array([[100, 200], [300, 400]], "<i2").tobytes() + b"\x01\x00",
                                    channels=2))
    assert len(x) == 2, f"expected 2 whole stereo frames, got {len(x)}"


# ---------------------------------------------------------------- malformed files

GOOD = wav_bytes(np.array([1, 2, 3, 4], "<i2").tobytes())

MALFORMED = {
    "empty file": (b"", "not a WAV"),
    "not a wav": (b"hello, this is a text file, not audio at all", "not a RIFF/WAVE"),
    "RIFF but not WAVE": (b"RIFF\x04\x00\x00\x00AVI LIST\x00\x00\x00\x00", "not a RIFF/WAVE"),
    "truncated header": (GOOD[:30], "truncated|no 'data'"),
    "truncated data": (GOOD[:-3], "truncated data"),
    "no fmt chunk": (b"RIFF\x10\x00\x00\x00WAVE" + chunk(b"data", b"\0\0"), "no 'fmt '"),
    "no data chunk": (b"RIFF\x1c\x00\x00\x00WAVE" + chunk(b"fmt ", fmt_body(PCM, 1, 8000, 16)), "no 'data'"),
    "zero channels": (wav_bytes(b"\0\0", channels=0), "zero channels"),
    "zero rate": (wav_bytes(b"\0\0", rate=0), "zero sample rate"),
    "ADPCM": (wav_bytes(b"\0\0", code=2), "unsupported format"),
    "float16": (wav_bytes(b"\0\0", code=FLOAT, bits=16), "unsupported format"),
    "40-bit PCM": (wav_bytes(b"\0" * 5, bits=40), "unsupported format"),
    "0 samples": (wav_bytes(b""), "no samples"),
    "bad block_align": (GOOD.replace(struct.pack("<HH", 2, 16), struct.pack("<HH", 3, 16), 1), "block_align"),
    "less than a frame": (wav_bytes(b"\0", bits=16), "no samples"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_raise_audio_error(tmp_path, case):
    raw, pattern = MALFORMED[case]
    p = write(tmp_path, raw, name="bad file.wav")
    with pytest.raises(AudioError, match=pattern) as info:
        audio.read_wav(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}: "), f"{case}: message does not start with the path: {msg!r}"
    assert "\n" not in msg, f"{case}: message is not one line: {msg!r}"
    assert isinstance(info.value, ValueError), "AudioError must be a ValueError"


def test_missing_file(tmp_path):
    p = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match=r"nope\.wav: cannot read"):
        audio.read_wav(p)
    with pytest.raises(AudioError, match="cannot read"):
        audio.read_wav(tmp_path)                                  # a directory


@given(st.data())
def test_fuzzed_files_only_raise_audio_error(tmp_path_factory, data):
    raw = bytearray(wav_bytes(np.arange(-6, 6, dtype="<i2").tobytes(), channels=2,
                              before=[chunk(b"LIST", b"abc")]))
    for _ in range(data.draw(st.integers(0, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = raw[:data.draw(st.integers(0, len(raw)))]
    p = tmp_path_factory.mktemp("fuzz") / "f.wav"
    p.write_bytes(bytes(raw))
    try:
        x, sr = audio.read_wav(p)
    except AudioError as e:
        assert str(e).startswith(f"{p}: "), f"message without path: {e}"
        return
    assert x.ndim == 1 and len(x) > 0 and sr > 0 and np.all(np.abs(x) <= 1), f"bad result {x!r} {sr}"


# ---------------------------------------------------------------- resampling

def test_resample_equal_rates_is_exact():
    x = np.random.default_rng(0).standard_normal(1001).astype(np.float32)
    np.testing.assert_array_equal(audio.resample(x, 22050, 22050), x, err_msg="equal rates must be identity")


@pytest.mark.parametrize("sr_from, sr_to", [(8000, 16000), (22050, 16000), (44100, 16000), (48000, 16000),
                                            (96000, 16000), (16000, 8000), (11025, 16000), (16000, 44100)])
def test_resample_matches_scipy(sr_from, sr_to):
    signal = pytest.importorskip("scipy.signal")
    x = np.random.default_rng(sr_from).standard_normal(sr_from // 10 + 7)
    got, want = audio.resample(x, sr_from, sr_to), signal.resample_poly(x, sr_to, sr_from)
    assert got.shape == want.shape, f"{sr_from}->{sr_to}: length {got.shape} vs scipy {want.shape}"
    np.testing.assert_allclose(got, want, atol=TOL["resample_vs_scipy"],
                               err_msg=f"{sr_from}->{sr_to} vs scipy")


@pytest.mark.parametrize("sr_from", [8000, 22050, 44100, 48000, 96000])
def test_resample_keeps_a_tone(sr_from):
    freq, sr_to = 1000.0, 16000
    y = audio.resample(tone(freq, sr_from, 0.5, amp=0.5), sr_from, sr_to)
    assert len(y) == 8000, f"{sr_from}: length {len(y)}"
    mid = y[1000:-1000].astype(np.float64)                        # away from the zero-padded edges
    spec = np.abs(np.fft.rfft(mid * np.hanning(len(mid))))
    peak = np.argmax(spec) * sr_to / len(mid)
    assert abs(peak - freq) <= sr_to / len(mid), f"{sr_from}: tone moved from {freq} Hz to {peak} Hz"
    amp = np.sqrt(2 * np.mean(mid**2))
    assert abs(amp / 0.5 - 1) < TOL["tone_amplitude"], f"{sr_from}: amplitude {amp:.4f}, want 0.5"


@pytest.mark.parametrize("sr_from, freq", [(48000, 10000.0), (44100, 12000.0), (22050, 9500.0)])
def test_resample_attenuates_above_new_nyquist(sr_from, freq):
    x = tone(freq, sr_from, 0.5, amp=0.5)
    y = audio.resample(x, sr_from, 16000)[500:-500].astype(np.float64)
    ratio_db = 10 * np.log10(np.mean(y**2) / np.mean(x**2))
    assert ratio_db < TOL["stopband_db"], f"{freq} Hz from {sr_from} Hz kept at {ratio_db:.1f} dB (aliasing)"


# ---------------------------------------------------------------- features

def test_front_end_constants():
    assert (audio.FRAME, audio.HOP, audio.N_FFT, audio.N_MELS, audio.N_FRAMES) == (640, 320, 1024, 40, 49)
    fb = audio.mel_filterbank()
    assert fb.shape == (513, 40), f"filterbank shape {fb.shape}"
    assert np.all(fb.sum(0) > 0), "an empty mel filter"
    freqs = np.arange(513) * 16000 / 1024
    assert freqs[fb.sum(1) > 0].min() > 20 and freqs[fb.sum(1) > 0].max() < 4000, (
        "filters outside 20..4000 Hz")
    mel = 2595 * np.log10(1 + freqs[np.argmax(fb, 0)] / 700)
    assert np.all(np.diff(mel) > 0) and np.ptp(np.diff(mel)) < 60, (
        "centres not evenly spaced on the HTK mel scale")


def test_fit_length():
    x = np.arange(1, 6, dtype=np.float32)
    np.testing.assert_array_equal(audio.fit_length(x, 9), [0, 0, 1, 2, 3, 4, 5, 0, 0], err_msg="centred pad")
    np.testing.assert_array_equal(audio.fit_length(x, 3), [2, 3, 4], err_msg="centred crop")
    np.testing.assert_array_equal(audio.fit_length(x, 5), x, err_msg="exact length")


def test_noise_floor_is_the_quietest_tenth_of_10ms_frames():
    # 100 frames of 10 ms, frame j a constant of amplitude levels[j] (its RMS), in shuffled order
    levels = np.linspace(0.01, 1.0, 100)
    rng = np.random.default_rng(1)
    x = (np.repeat(rng.permutation(levels), audio.NOISE_FRAME)
         * rng.choice([-1.0, 1.0], 100 * audio.NOISE_FRAME))
    assert audio.noise_floor(x) == pytest.approx(np.quantile(levels, 0.1), rel=1e-6)
    assert audio.noise_floor(np.zeros(3000)) == 0.0
    assert audio.noise_floor(np.full(50, 0.5)) == pytest.approx(0.5)     # shorter than one frame: its RMS


@pytest.mark.parametrize("length", [800, 16000, 23456])
def test_fit_clip_is_fit_length_plus_a_fixed_dither_below_the_clip_floor(length):
    rng = np.random.default_rng(length)
    x = (0.003 * rng.standard_normal(length)).astype(np.float32)          # a quiet room ...
    x[length // 3: length // 2] += 0.5 * np.sin(np.arange(length // 2 - length // 3))   # ... and a loud word
    y = audio.fit_clip(x)
    assert y.shape == (audio.CLIP_SAMPLES,) and y.dtype == np.float32
    dither = y.astype(np.float64) - audio.fit_length(x)
    level = audio.noise_floor(x) * 10 ** (audio.DITHER_DB / 20)
    np.testing.assert_allclose(dither / level,
                               np.random.default_rng(audio.PAD_SEED).standard_normal(audio.CLIP_SAMPLES),
                               rtol=1e-4, atol=1e-4,
                               err_msg="the dither: fixed white noise DITHER_DB below the floor")
    assert 0.002 < audio.noise_floor(x) < 0.004                          # the room's level, not the word's
    np.testing.assert_array_equal(audio.fit_clip(x), y, err_msg="determinism")


def test_fit_clip_leaves_digital_silence_silent_and_fills_padding():
    np.testing.assert_array_equal(audio.fit_clip(np.zeros(5000, np.float32)), np.zeros(audio.CLIP_SAMPLES))
    x = (0.01 * np.random.default_rng(2).standard_normal(4000)).astype(np.float32)
    y = audio.fit_clip(x)
    pad = y[:(audio.CLIP_SAMPLES - 4000) // 2]                             # the padding before the clip
    level = audio.noise_floor(x) * 10 ** (audio.DITHER_DB / 20)
    assert 0.5 * level < np.sqrt(np.mean(pad.astype(np.float64) ** 2)) < 2 * level


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize("seconds", [0.05, 1.0, 2.3])
def test_feature_shapes(rate, seconds):
    x = np.random.default_rng(rate).standard_normal(max(1, int(rate * seconds))) * 0.1
    f = audio.features(x, rate)
    assert f.shape == (49, 13) and f.dtype == np.float32, f"{rate} Hz, {seconds} s: {f.shape} {f.dtype}"
    assert np.all(np.isfinite(f)), f"{rate} Hz, {seconds} s: non-finite features"


def test_features_of_one_sample_and_of_silence():
    f = audio.features(np.zeros(1), 16000)
    want = audio.mfcc(np.zeros(16000))
    np.testing.assert_array_equal(f, want, err_msg="a single zero sample is 1 s of silence")
    np.testing.assert_allclose(audio.log_mel(np.zeros(16000)), np.log(1e-6), rtol=1e-6,
                               err_msg="silence floor")


def test_tone_at_8k_and_16k_gives_the_same_log_mel():
    a = audio.log_mel(audio.resample(tone(1000, 8000), 8000))
    b = audio.log_mel(tone(1000, 16000))
    d = np.abs(a - b)[2:-2]                                        # skip frames touching the ends
    assert d.max() < TOL["logmel_8k_vs_16k"], f"8 kHz vs 16 kHz log-mel differ by {d.max():.4f} nats"
    fa, fb = audio.features(tone(1000, 8000), 8000), audio.features(tone(1000, 16000), 16000)
    assert np.abs(fa - fb)[2:-2].max() < 5 * TOL["logmel_8k_vs_16k"], "features() differ for 8 vs 16 kHz"
    assert np.argmax(b[20]) == np.argmax(np.abs(audio.mel_filterbank()[64])), "1 kHz not in its mel band"


def test_mfcc_is_the_orthonormal_dct_of_log_mel():
    fft = pytest.importorskip("scipy.fft")
    x = np.random.default_rng(1).standard_normal(16000) * 0.3
    lm = audio.log_mel(x).astype(np.float64)
    want = fft.dct(lm, type=2, norm="ortho", axis=1)[:, :13]
    np.testing.assert_allclose(audio.mfcc(x), want, atol=TOL["mfcc_vs_dct"], err_msg="MFCC vs scipy DCT")
    np.testing.assert_allclose(audio.mfcc(x, n_mfcc=40), fft.dct(lm, norm="ortho", axis=1),
                               atol=TOL["mfcc_vs_dct"], err_msg="all 40 coefficients")


def test_log_mel_independently():
    """The power-spectrum -> mel -> log chain, rebuilt from the formulas."""
    x = np.random.default_rng(2).standard_normal(16000)
    n = np.arange(640)
    frame = x[320 * 7:320 * 7 + 640] * (0.5 - 0.5 * np.cos(2 * np.pi * n / 640))
    power = np.abs(np.fft.fft(frame, 1024)[:513]) ** 2
    mel = lambda f: 2595 * np.log10(1 + f / 700)                   # noqa: E731
    edges = 700 * (10 ** (np.linspace(mel(20), mel(4000), 42) / 2595) - 1)
    freqs = np.arange(513) * 16000 / 1024
    want = [np.log(sum(p * max(0, min((f - edges[i]) / (edges[i + 1] - edges[i]),
                                      (edges[i + 2] - f) / (edges[i + 2] - edges[i + 1])))
                       for p, f in zip(power, freqs)) + 1e-6) for i in range(40)]
    np.testing.assert_allclose(audio.log_mel(x)[7], want, rtol=1e-5, err_msg="frame 7 log-mel")


def test_features_deterministic_and_same_through_a_wav(tmp_path):
    x = audio.quantize16(np.random.default_rng(3).standard_normal(22050) * 0.2)
    audio.write_wav(tmp_path / "c.wav", x, 22050)
    np.testing.assert_array_equal(audio.wav_features(tmp_path / "c.wav"), audio.features(x, 22050),
                                  err_msg="wav_features != features of the same quantised clip")
    np.testing.assert_array_equal(audio.features(x, 22050), audio.features(x.copy(), 22050),
                                  err_msg="determinism")


def test_mfcc_rejects_wrong_rate():
    with pytest.raises(ValueError, match="16000"):
        audio.mfcc(np.zeros(8000), sr=8000)


# ---------------------------------------------------------------- shipped files

@pytest.mark.parametrize("npz", ["speech_commands.npz", "spoken_digits.npz"])
def test_shipped_wavs_match_stored_features(npz):
    """data/wav/<label>_0.wav is the first test-split row of that class in the .npz."""
    path = DATA / npz
    if not path.exists():
        pytest.skip(f"{path} not built (scripts/make_speech_datasets.py)")
    with np.load(path, allow_pickle=False) as z:
        labels, x_test, y_test = list(z["labels"]), z["x_test"], z["y_test"]
        assert z["x"].shape[1:] == (49, 13) and z["x"].dtype == np.float16, f"{npz}: x {z['x'].shape}"
        assert set(z["voice_train"]).isdisjoint(z["voice_test"]), f"{npz}: a voice in train and test"
    for c, label in enumerate(labels):
        wav = DATA / "wav" / f"{label}_0.wav"
        assert wav.exists(), f"missing {wav}"
        row = x_test[np.flatnonzero(y_test == c)[0]].astype(np.float32)
        got = audio.wav_features(wav)
        np.testing.assert_allclose(got, row, rtol=TOL["float16_row"], atol=TOL["float16_row"],
                                   err_msg=f"{wav} vs {npz} first '{label}' test row")
