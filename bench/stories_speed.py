"""How fast the built-in story generator writes text, on one core (a benchmark, not a test).

    .venv/bin/python bench/stories_speed.py [--stories 20000]
"""
import time

from train.cli import ArgumentParser, positive, run_main
from train.stories import generate_stories


def main():
    parser = ArgumentParser(description=__doc__.splitlines()[0], epilog=None)
    parser.add_argument("--stories", type=positive(int), default=20000)
    parser.add_argument("--repeats", type=positive(int), default=3)
    args = parser.parse_args()
    best, size = float("inf"), 0
    for _ in range(args.repeats):
        started = time.perf_counter()
        size = sum(len(story) for story in generate_stories(1337, args.stories))
        best = min(best, time.perf_counter() - started)
    print(f"{args.stories:,} stories, {size / 1e6:.1f} MB in {best:.2f} s: {size / 1e6 / best:.1f} MB/s (best of {args.repeats})")


if __name__ == "__main__":
    run_main(main, "stories_speed")
