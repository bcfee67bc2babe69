"""Tests for scripts/make_speech_datasets.py's random espeak-ng voices (--random-voices).

The variant text is checked everywhere; synthesis only where espeak-ng is installed.
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("make_speech_datasets",
                                               ROOT / "scripts" / "make_speech_datasets.py")
mk = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("make_speech_datasets", mk)
_spec.loader.exec_module(mk)

# espeak-ng voice-file keywords random_variant may write, and each one's argument count
KEYWORDS = {"language": 1, "name": 1, "gender": 1, "pitch": 2, "formant": 4, "klatt": 1, "flutter": 1,
            "roughness": 1, "voicing": 1, "consonants": 2, "tone": 6, "echo": 2, "breath": 8}


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_variant_is_a_well_formed_seeded_voice_file(seed):
    text = mk.random_variant(np.random.default_rng(seed), "qzrand007")
    assert text == mk.random_variant(np.random.default_rng(seed), "qzrand007")   # a pure function of the seed
    lines = text.splitlines()
    assert lines[:2] == ["language variant", "name qzrand007"]
    formants = set()
    for line in lines:
        key, *args = line.split()
        assert key in KEYWORDS and len(args) == KEYWORDS[key], line
        if key == "formant":
            f, freq, strength, width = map(int, args)
            formants.add(f)
            assert 0 <= f <= 8 and 75 <= freq <= 125 and 60 <= strength <= 150 and 60 <= width <= 160
        if key == "pitch":
            low, high = map(int, args)
            assert 60 <= low < high
        if key == "klatt":
            assert 1 <= int(args[0]) <= 5
    assert 0 in formants


def test_random_variants_differ_between_seeds():
    texts = {mk.random_variant(np.random.default_rng([0, 3000, i]), "v") for i in range(20)}
    assert len(texts) == 20


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_random_voices_speak_and_leave_the_shipped_voices_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(mk, "ESPEAK_PATH", None)
    args = dict(speed=160, pitch=50, amplitude=100)
    before = mk.synth("gmw/en-US+m5", "seven", wav_path=str(tmp_path / "a.wav"), **args)
    ids = mk.make_random_voices(str(tmp_path), 3, ["gmw/en-US", "gmw/en"], seed=0)
    assert ids == [f"{a}+qzrand{i:03d}" for i in range(3) for a in ("gmw/en-US", "gmw/en")]
    assert mk.ESPEAK_PATH == str(tmp_path)
    after = mk.synth("gmw/en-US+m5", "seven", wav_path=str(tmp_path / "b.wav"), **args)
    assert np.array_equal(before, after)            # the private data copy speaks the named voices alike
    plain = mk.synth("gmw/en-US", "seven", wav_path=str(tmp_path / "c.wav"), **args)
    for voice in ids:
        x = mk.synth(voice, "seven", wav_path=str(tmp_path / "d.wav"), **args)
        assert x is not None and len(x) > 1600                       # at least 0.1 s of audio
        assert len(x) != len(plain) or not np.array_equal(x, plain)  # the variant took effect
    # the private copy stays under espeak-ng's 349-voice list limit with the full 200 voices
    out = subprocess.run(["espeak-ng", f"--path={tmp_path}", "--voices=variant"], capture_output=True,
                         text=True)
    assert "maximum number" not in out.stderr
    n_files = sum(len(f) for _, _, f in os.walk(tmp_path / "espeak-ng-data" / "voices")) + \
        sum(len(f) for _, _, f in os.walk(tmp_path / "espeak-ng-data" / "lang"))
    assert n_files + 197 < 349, n_files
    assert re.search(r"qzrand000", out.stdout)


def test_unknown_words_are_the_speech_commands_protocols_and_more():
    """`_unknown_` holds the data set's 25 other words (digits included), never a command word."""
    assert set(mk.SPEECH_COMMANDS_OTHER) <= set(mk.UNKNOWN_WORDS) and len(mk.SPEECH_COMMANDS_OTHER) == 25
    assert set(mk.DIGITS) <= set(mk.UNKNOWN_WORDS)
    assert (not set(mk.COMMANDS) & set(mk.UNKNOWN_WORDS)
            and len(set(mk.UNKNOWN_WORDS)) == len(mk.UNKNOWN_WORDS))


def test_cache_returns_what_was_made_and_makes_it_once(tmp_path, monkeypatch):
    monkeypatch.setattr(mk, "CACHE_DIR", str(tmp_path))
    calls = []

    def make(x):
        calls.append(1)
        return x
    word = np.arange(5, dtype=np.float32)
    assert np.array_equal(mk.cached(("e", "w"), lambda: make(word)), word)
    assert np.array_equal(mk.cached(("e", "w"), lambda: make(None)), word) and len(calls) == 1
    assert mk.cached(("e", "failed"), lambda: make(None)) is None
    # a failure is kept too
    assert mk.cached(("e", "failed"), lambda: make(word)) is None and len(calls) == 2
    assert mk.cache_load(("e", "other")) == (False, None)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.booleans())
def test_clip_with_and_without_the_channel(seed, silence):
    """The channel draws from its own stream: off, the clip ignores that stream; on, it is finite, in
    [-1, 1], seeded, and the recording style and length are the same as without it."""
    word = None if silence else (0.5 * np.sin(np.arange(6000) / 7.0)).astype(np.float32)
    off = mk.Recipe(channel=False)
    a = mk.make_clip(word, mk.clip_rng((seed,)), off, np.random.default_rng(1))
    b = mk.make_clip(word, mk.clip_rng((seed,)), off, np.random.default_rng(2))
    assert np.array_equal(a, b)
    on1 = mk.make_clip(word, mk.clip_rng((seed,)), mk.Recipe(), np.random.default_rng([seed, 6]))
    on2 = mk.make_clip(word, mk.clip_rng((seed,)), mk.Recipe(), np.random.default_rng([seed, 6]))
    assert np.array_equal(on1, on2) and np.all(np.isfinite(on1)) and np.max(np.abs(on1)) <= 1.0
    trimmed = mk.draws_trimmed(mk.clip_rng((seed,)))
    assert (len(on1) < 16000) == (len(a) < 16000) or trimmed


def test_natural_plans_follow_the_engine_groups_and_train_only():
    """A training word clip draws a natural voice with recipe.natural_share, the engine group by
    NATURAL_GROUPS; validation and test clips never do."""
    natural = [("flite", "kal16", "kal", "M"), ("pico", {"id": "en-US"}, "pico/en-US", "F")] + \
        [("kokoro", {"id": f"mix{i}"}, f"kokoro/mix{i}", "F") for i in range(5)]
    words = [["yes"]]
    recipe = mk.Recipe(natural_share=0.5)
    plans = [mk.natural_plan(("d", "train", 0, i, (0, 0, 0, 0, i)), words, natural, recipe)
             for i in range(3000)]
    drawn = [p for p in plans if p is not None]
    assert abs(len(drawn) / 3000 - 0.5) < 0.04
    share = {e: sum(p[0] == e for p in drawn) / len(drawn) for e in ("flite", "pico", "kokoro")}
    w = mk.NATURAL_GROUPS
    assert abs(share["kokoro"] - w["kokoro"] / sum(w.values())) < 0.05, share
    assert abs(share["pico"] - w["pico"] / sum(w.values())) < 0.04, share
    assert all(mk.natural_plan(("d", s, 0, i, (0, 0, 1, 0, i)), words, natural, recipe) is None
               for s in ("val", "test") for i in range(200))
