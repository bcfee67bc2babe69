#!/usr/bin/env python3
"""Build data/speech_commands_real.npz: features of real people's recordings, split by speaker.

    python scripts/make_real_speech_features.py [--src ../shared/data/speech-commands-dev]

The source is one half of the speakers of the Speech Commands v0.02 12-class
*test* set (P. Warden 2018, CC-BY 4.0; the official archive
speech_commands_test_set_v0.02.tar.gz): 12 folders (yes .. go, ``_unknown_``,
``_silence_``) of 1 s 16 kHz wav files. Every clip goes through the model's own
front-end, ``qz.audio.wav_features`` (49 x 13 MFCC, stored as float16); the wav
files themselves never enter the repository.

Speakers. The speaker of a clip is the 8-hex-digit id in its name
(``<id>_nohash_<n>.wav``, ``<word>_<id>_nohash_<n>.wav.wav`` in ``_unknown_``).
Speakers are dealt to N_FOLDS folds, the largest first, each to the fold
with the fewest clips so far (ties broken by a seeded draw), so every fold
holds about a fifth of the clips and no speaker is in two folds. The
``_silence_`` clips (background noise, no speaker) are dealt round-robin in a
seeded order. Folds 0-2 are the training split (``x``), fold 3 validation
(``x_val``), fold 4 test (``x_test``): choose on validation, report on test.
``fold_*`` keeps each row's fold, for cross-validation over speakers.

Arrays: x / x_val / x_test float16 (N, 49, 13); y* int64; labels (12,);
speaker_* (the hex id, '' for _silence_); word_* (the spoken word, the label
itself except in _unknown_); fold_*; file_* (the clip's file name).
"""
import argparse
import hashlib
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qz import audio  # noqa: E402

LABELS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_unknown_", "_silence_"]
N_FOLDS = 5
SPLIT_FOLDS = {"train": (0, 1, 2), "val": (3,), "test": (4,)}
SPEAKER = re.compile(r"(?:^|_)([0-9a-f]{8})_nohash_\d+\.wav")
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "speech-commands-dev"
OUT = ROOT / "data" / "speech_commands_real.npz"


def parse(label, name):
    """-> (speaker id or '', word) of a clip file name in folder `label`."""
    m = SPEAKER.search(name)
    if label == "_silence_":
        return "", label
    if m is None:
        raise ValueError(f"{label}/{name}: no speaker id (<8 hex digits>_nohash_<n>.wav) in the name")
    word = name.split("_", 1)[0] if label == "_unknown_" else label
    return m.group(1), word


def deal_folds(items, seed):
    """items [(label, name, speaker, word)] -> fold per item (list), speaker-disjoint and balanced."""
    rng = np.random.default_rng(seed)
    counts = {}
    for _, _, spk, _ in items:
        if spk:
            counts[spk] = counts.get(spk, 0) + 1
    speakers = sorted(counts, key=lambda s: (-counts[s], s))
    load = np.zeros(N_FOLDS)
    fold_of = {}
    for s in speakers:
        least = np.flatnonzero(load == load.min())
        f = int(rng.choice(least))
        fold_of[s] = f
        load[f] += counts[s]
    silence = [i for i, it in enumerate(items) if not it[2]]
    folds = [fold_of.get(it[2], -1) for it in items]
    for r, i in enumerate(rng.permutation(silence)):
        folds[i] = r % N_FOLDS
    return folds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="folder of the 12 class folders")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=0, help="seed of the fold deal (default 0)")
    args = ap.parse_args(argv)
    if not args.src.is_dir():
        sys.exit(f"make_real_speech_features: {args.src}: no such folder (the dev recordings live in "
                 "../shared/data/speech-commands-dev)")
    items = []
    for label in LABELS:
        folder = args.src / label
        if not folder.is_dir():
            sys.exit(f"make_real_speech_features: {folder}: missing class folder")
        for name in sorted(os.listdir(folder)):
            if name.endswith(".wav"):
                items.append((label, name, *parse(label, name)))
    folds = deal_folds(items, args.seed)
    t0 = time.perf_counter()
    x = np.empty((len(items), audio.N_FRAMES, audio.N_MFCC), np.float32)
    for i, (label, name, _, _) in enumerate(items):
        x[i] = audio.wav_features(args.src / label / name)
        if (i + 1) % 200 == 0 or i + 1 == len(items):
            done = time.perf_counter() - t0
            print(f"\r{i + 1}/{len(items)} clips, {done:.0f} s, "
                  f"ETA {done / (i + 1) * (len(items) - i - 1):.0f} s",
                  end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    y = np.array([LABELS.index(it[0]) for it in items], np.int64)
    folds = np.array(folds, np.int64)
    arrays = {"labels": np.array(LABELS)}
    for split, fs in SPLIT_FOLDS.items():
        rows = np.flatnonzero(np.isin(folds, fs))
        suffix = "" if split == "train" else f"_{split}"
        arrays[f"x{suffix}"] = x[rows].astype(np.float16)
        arrays[f"y{suffix}"] = y[rows]
        arrays[f"speaker_{split}"] = np.array([items[i][2] for i in rows])
        arrays[f"word_{split}"] = np.array([items[i][3] for i in rows])
        arrays[f"file_{split}"] = np.array([items[i][1] for i in rows])
        arrays[f"fold_{split}"] = folds[rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, args.out)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()[:16]
    print(f"{args.out}: {len(items)} clips, {len({it[2] for it in items if it[2]})} speakers; "
          + ", ".join(f"{s} {int(np.isin(folds, fs).sum())}" for s, fs in SPLIT_FOLDS.items())
          + f"; sha256 {digest}")
    for s, fs in SPLIT_FOLDS.items():
        counts = np.bincount(y[np.isin(folds, fs)], minlength=len(LABELS))
        print(f"  {s:5s} per class: {' '.join(str(c) for c in counts)}")


if __name__ == "__main__":
    main()
