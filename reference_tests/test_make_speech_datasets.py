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
_spec = importlib.util.spec_from_file_location("make_speech_datasets", ROOT / "scripts" / "make_speech_datasets.py")
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
    out = subprocess.run(["espeak-ng", f"--path={tmp_path}", "--voices=variant"], capture_output=True, text=True)
    assert "maximum number" not in out.stderr
    n_files = sum(len(f) for _, _, f in os.walk(tmp_path / "espeak-ng-data" / "voices")) + \
        sum(len(f) for _, _, f in os.walk(tmp_path / "espeak-ng-data" / "lang"))
    assert n_files + 197 < 349, n_files
    assert re.search(r"qzrand000", out.stdout)
