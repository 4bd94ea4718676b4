"""The built-in story generator: reproducible, independent per story, clean text, varied plots."""
import random
import re

import pytest

from train import stories
from train.stories import (BOYS, GENERATOR_VERSION, GIRLS, GROWNUPS, PLOTS, THEY,
                           generate_stories, generate_story)

SEED = 1234
PRONOUN_OF = {**{n: "she" for n in GIRLS}, **{n: "he" for n in BOYS},
              **{n: "they" for n in THEY}, **dict(GROWNUPS)}
SENTENCE_START = {"He": "he", "His": "he", "She": "she", "Her": "she"}
WRONG_ARTICLE = re.compile(r"\b(?:[Aa] [aeiouAEIOU]\w*|[Aa]n [^aeiouAEIOU\W]\w*)")
LOWERCASE_START = re.compile(r'(?:^|[.!?] |\." |, ")[a-z]\w*')
WRONG_AGREEMENT = re.compile(r"\b(?:[Hh]e|[Ss]he) were\b|\b[Tt]hey was\b|"
                             r"(?<!and )\b(?:%s) were\b" % "|".join(THEY))


@pytest.fixture(scope="module")
def sample():
    return list(generate_stories(SEED, 500))


def problems(story):
    """Everything wrong with one story's text, as a list of complaints (empty when it is fine)."""
    found = []
    if not story.isascii() or "\0" in story or "<|endoftext|>" in story:
        found.append("not plain ASCII text")
    if not 400 <= len(story) <= 1200:
        found.append(f"{len(story)} characters")
    if story.count('"') % 2:
        found.append("unbalanced quotes")
    for bad in ("{", "}", "  ", " ,", " .", "..", "\n\n\n"):
        if bad in story:
            found.append(f"contains {bad!r}")
    if story != story.strip() or any("\n" in p for p in story.split("\n\n")):
        found.append("stray whitespace or line breaks")
    found += [f"article: {m}" for m in WRONG_ARTICLE.findall(story)]
    found += [f"starts lowercase: {m!r}" for m in LOWERCASE_START.findall(story)]
    found += [f"agreement: {m}" for m in WRONG_AGREEMENT.findall(story)]
    return found + pronoun_errors(story)


def pronoun_errors(story):
    """Narration sentences opening with He/His/She/Her that do not fit the character named first
    in the last sentence that names anyone (the generator's rule for what such a pronoun means)."""
    # Speech may mention anyone: keep only how it ends, so sentences still split where they end.
    narration = re.sub(r'"[^"]*?([.!?]?)"', r"Q\1", story)
    subject, errors = None, []
    for sentence in re.split(r"(?<=[.!?])\s+", narration):
        words = re.findall(r"[A-Za-z]+", sentence)
        if words and words[0] in SENTENCE_START:
            if subject not in (None, SENTENCE_START[words[0]]):
                errors.append(f"pronoun for a {subject!r} character: {sentence!r}")
            continue
        named = [PRONOUN_OF[w] for w in words if w in PRONOUN_OF]
        if named:
            subject = named[0]
    return errors


def test_the_checks_can_fail():
    assert pronoun_errors("Tom ran home. She was tired.")
    assert pronoun_errors('"Hi," said Alex. He smiled.')
    assert not pronoun_errors("Tom ran home. He was tired. His dog barked.")
    bad = 'Once there was a owl named Lily. she said, "Hi. They was here."' + " Lily smiled." * 40
    assert len(problems(bad)) >= 3


def test_version_is_an_int():
    assert isinstance(GENERATOR_VERSION, int) and GENERATOR_VERSION >= 1


def test_same_seed_same_stories_other_seed_other_stories(sample):
    assert list(generate_stories(SEED, 30)) == sample[:30]
    other = list(generate_stories(SEED + 1, 30))
    assert sum(a != b for a, b in zip(other, sample)) >= 29


def test_story_i_depends_only_on_seed_and_i(sample):
    assert list(generate_stories(SEED, 25, start=200)) == sample[200:225]
    random.seed(0)  # the module-level generator must play no part
    assert generate_story(random.Random(f"{SEED}-7")) == sample[7]
    backward = [generate_story(random.Random(f"{SEED}-{i}")) for i in (42, 3)]
    assert backward == [sample[42], sample[3]]


def test_stories_are_clean(sample):
    for story in sample:
        assert problems(story) == [], story


def test_every_plot_writes_clean_stories():
    assert len(PLOTS) >= 5
    for plot in PLOTS:
        for k in range(60):
            story = plot(random.Random(k))
            assert problems(story) == [], (plot.__name__, story)


def test_all_plots_occur(monkeypatch):
    counts = {plot.__name__: 0 for plot in PLOTS}

    def counted(plot):
        def run(rng):
            counts[plot.__name__] += 1
            return plot(rng)
        return run
    monkeypatch.setattr(stories, "PLOTS", tuple(counted(p) for p in PLOTS))
    assert len(list(generate_stories(SEED, 500))) == 500
    assert min(counts.values()) >= 30, counts


def test_all_kinds_of_hero_occur(sample):
    text = " ".join(sample)
    for names in (GIRLS, BOYS, THEY):
        assert any(f"named {n}." in text for n in names)


def test_two_thousand_stories_are_all_different():
    assert len(set(generate_stories(SEED, 2000))) == 2000


def test_three_thousand_stories_make_megabytes():
    """Enough text for a real training run (speed is measured by bench/stories_speed.py)."""
    assert sum(len(story) for story in generate_stories(SEED, 3000)) > 2_000_000
