"""The demo's preference pairs, written by the project itself (no download).

`python -m compo.demo.pairs` regenerates compo/demo/assets/demo_pairs.jsonl; a test checks
the shipped file equals what this module makes.
"""

from __future__ import annotations

import random
from pathlib import Path

from compo import fileio

ASSET = Path(__file__).parent / "assets" / "demo_pairs.jsonl"
SEED = 20250505
COLORS = {
    "sky": "blue", "grass": "green", "snow": "white", "coal": "black", "lemon": "yellow",
    "tomato": "red", "carrot": "orange", "violet": "purple", "chocolate": "brown",
    "ash": "grey", "cherry": "red", "banana": "yellow", "leaf": "green", "milk": "white",
    "night": "black", "plum": "purple", "rust": "orange", "sand": "yellow",
}
ANIMALS = {
    "dog": "barks", "cat": "meows", "cow": "moos", "duck": "quacks", "sheep": "bleats",
    "lion": "roars", "owl": "hoots", "snake": "hisses", "horse": "neighs", "frog": "croaks",
    "bee": "buzzes", "pig": "oinks", "wolf": "howls", "mouse": "squeaks",
}
RUDE = ["No.", "Figure it out yourself.", "Whatever.", "Why would I tell you?", "Go away."]


def arithmetic_pairs(rng: random.Random) -> list[dict]:
    """a + b with the right sum (chosen) and a near miss (rejected)."""
    rows = []
    for a in range(1, 11):
        for b in range(1, 11):
            wrong = a + b + rng.choice([-2, -1, 1, 2])
            rows.append({"prompt": f"What is {a} plus {b}?",
                         "chosen": f" {a} plus {b} is {a + b}.",
                         "rejected": f" {a} plus {b} is {wrong}."})
    return rows


def fact_pairs(rng: random.Random) -> list[dict]:
    """Colours and animal sounds: the true fact against a plausible wrong one."""
    rows = []
    colors = sorted(set(COLORS.values()))
    for thing, color in COLORS.items():
        wrong = rng.choice([c for c in colors if c != color])
        rows.append({"prompt": f"What color is the {thing}?",
                     "chosen": f" The {thing} is {color}.",
                     "rejected": f" The {thing} is {wrong}."})
    sounds = sorted(set(ANIMALS.values()))
    for animal, sound in ANIMALS.items():
        wrong = rng.choice([s for s in sounds if s != sound])
        rows.append({"prompt": f"What does a {animal} do?",
                     "chosen": f" A {animal} {sound}.",
                     "rejected": f" A {animal} {wrong}."})
    return rows


def style_pairs(rng: random.Random, count: int) -> list[dict]:
    """A helpful full sentence against a rude brush-off (easy, clean pairs)."""
    rows = []
    for _ in range(count):
        a, b = rng.randint(11, 40), rng.randint(11, 40)
        rows.append({"prompt": f"Could you please add {a} and {b}?",
                     "chosen": f" Sure, happy to help: {a} plus {b} is {a + b}.",
                     "rejected": " " + rng.choice(RUDE)})
    return rows


def make_pairs(seed: int = SEED) -> list[dict]:
    """All demo pairs, shuffled, each with a stable id."""
    rng = random.Random(seed)
    rows = arithmetic_pairs(rng) + fact_pairs(rng) + style_pairs(rng, 150)
    rng.shuffle(rows)
    return [{"id": f"demo-{i:03d}", **row} for i, row in enumerate(rows)]


if __name__ == "__main__":
    fileio.write_jsonl(ASSET, make_pairs())
    print(f"wrote {ASSET}")
