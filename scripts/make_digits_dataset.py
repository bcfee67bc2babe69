#!/usr/bin/env python3
"""Copy the UCI optical digits set out of scikit-learn's wheel into data/.

The file `sklearn/datasets/data/digits.csv.gz` inside scikit-learn's wheel is
the test part of the UCI "Optical Recognition of Handwritten Digits" set:
1797 images of 8x8 pixels (values 0..16), one per row, 64 pixel columns then
the label. It is copied byte for byte; qz reads it with `--frames 8` (each
image becomes a sequence of 8 rows of 8 pixels). scikit-learn is needed only
here, to fetch the wheel, never at run time:

    pip download scikit-learn --no-deps -d /tmp/skl
    python scripts/make_digits_dataset.py /tmp/skl/scikit_learn-*.whl
"""
import argparse
import gzip
import hashlib
import sys
import zipfile
from pathlib import Path

MEMBER = "sklearn/datasets/data/digits.csv.gz"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel", help="a scikit-learn wheel (.whl)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data" / "digits.csv.gz"))
    args = ap.parse_args(argv)
    try:
        raw = zipfile.ZipFile(args.wheel).read(MEMBER)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        sys.exit(f"cannot read {MEMBER} from {args.wheel}: {e}")
    rows = gzip.decompress(raw).decode().splitlines()
    if len(rows) != 1797 or any(len(r.split(",")) != 65 for r in rows):
        sys.exit(f"unexpected content: {len(rows)} rows")
    Path(args.out).write_bytes(raw)
    print(f"wrote {Path(args.out).name}: {len(raw):,} bytes, {len(rows)} images, "
          f"sha256 {hashlib.sha256(raw).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
