"""The King James Bible as a plain-text corpus for bench/recipe.py: Debian's bible-kjv package
(`apt-get install bible-kjv`) prints it, and this writes its 1189 chapters as one TinyStories-style
file, the chapters separated by <|endoftext|>, so that nano2 holds out the last 5% of them (the
end of the New Testament) for validation.

    .venv/bin/python bench/kjv.py data/kjv/kjv.txt
    .venv/bin/python bench/recipe.py --data data/kjv --ablation
"""
import os
import re
import shutil
import subprocess

from engine.errors import UserError
from train.cli import ArgumentParser, run_main

CHAPTER = re.compile(r"\n\n(?=(?:[1-3] )?[A-Z][A-Za-z ]+ \d+\n)")  # a header such as "1 Kings 3" after a blank line


def main():
    parser = ArgumentParser(description=__doc__.splitlines()[0], epilog=None)
    parser.add_argument("path", help="the .txt file to write (its folder is made)")
    args = parser.parse_args()
    if shutil.which("bible") is None:
        raise UserError("the bible command is missing: install Debian's bible-kjv package (apt-get install bible-kjv)")
    printed = subprocess.run(["bible", "gen1:1-rev22:21"], capture_output=True, text=True)
    if printed.returncode:
        raise UserError(f"bible failed (status {printed.returncode}): {printed.stderr.strip() or '(no message)'}")
    text = printed.stdout
    chapters = [c.strip() for c in CHAPTER.split("\n\n" + text.strip()) if c.strip()]
    if len(chapters) != 1189:
        raise UserError(f"bible printed {len(chapters)} chapters, not the King James Bible's 1189")
    os.makedirs(os.path.dirname(os.path.abspath(args.path)), exist_ok=True)
    with open(args.path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n<|endoftext|>\n".join(chapters) + "\n")
    os.replace(args.path + ".tmp", args.path)
    print(f"{args.path}: {len(chapters)} chapters, {os.path.getsize(args.path) / 1e6:.1f} MB")


if __name__ == "__main__":
    run_main(main, "kjv")
