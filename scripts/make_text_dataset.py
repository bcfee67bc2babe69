#!/usr/bin/env python3
"""Build data/kjv.txt.gz: about 1 MB of the King James Bible for the character LM.

Source: Debian's `bible-kjv` package (the KJV text is in the public domain;
the retrieval program is GPL-2+, but only its text output is shipped here).
Books are taken in canonical order from Genesis until the size target is
reached; verse numbers and chapter headings are dropped, one verse per line.
The output is deterministic (gzip mtime 0), so rerunning gives identical bytes.

    apt-get install bible-kjv
    python scripts/make_text_dataset.py            # -> data/kjv.txt.gz
"""
import argparse
import gzip
import re
import shutil
import subprocess
import sys
from pathlib import Path

BOOKS = ["Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth",
         "1Samuel", "2Samuel", "1Kings", "2Kings"]


def book_text(book):
    out = subprocess.run(["bible", "-l0", f"{book}1:1-200:200"], check=True,
                         capture_output=True, text=True).stdout
    verses = []
    for line in out.splitlines():
        m = re.match(r"^\s+\d+ (.*)$", line)     # "  12 And God said ..." -> the verse
        if m:
            verses.append(m.group(1).strip())
    if not verses:
        raise SystemExit(f"bible printed no verses for {book}: is bible-kjv installed?")
    return "\n".join(verses) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data" / "kjv.txt.gz"))
    ap.add_argument("--target-bytes", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    if shutil.which("bible") is None:
        sys.exit("the `bible` program is missing: apt-get install bible-kjv")
    text = ""
    for book in BOOKS:
        text += book_text(book)
        if len(text) >= args.target_bytes:
            break
    text = text[: args.target_bytes]
    text = text[: text.rfind("\n") + 1]          # end on a whole verse
    raw = text.encode("ascii")                   # the KJV text here is plain ASCII
    with open(args.out, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw)
    print(f"wrote {args.out}: {len(raw):,} characters, {len(set(raw))} distinct bytes")


if __name__ == "__main__":
    main()
