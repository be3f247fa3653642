"""Generates data/product_reviews.csv: shop reviews labelled by the catalogue's rule that the obvious prompt leaves
unsaid.

    python data/make_product_reviews.py            # writes data/product_reviews.csv (seed 0, 480 rows)
    python data/make_product_reviews.py --check    # regenerates in memory and fails if the committed file differs

House rule: the label is the reviewer's verdict on the PRODUCT itself (quality, how it works, fit, durability):
`positive` or `negative`. What they say about the delivery, the packaging, the seller or customer service is rated
elsewhere and does not count, however loudly they say it.

These are the reviews a catalogue team finds hard: two in three are mixed (the product verdict and the delivery or
service experience disagree), one in six agree, one in six mention the product only. Which part comes first, the
shouting, the closing rant or praise (always about the seller or the delivery) and typos are drawn independently of
the label, so only the product verdict decides it. Every fragment below was written by hand for PromptOpt. Released
under CC0-1.0 (public domain dedication), like the generated file.
"""

from __future__ import annotations

import random
from pathlib import Path

from make_support_triage import cli, cycling, unique_rows  # shared generator parts (run as a script from data/)

OUT = Path(__file__).resolve().parent / "product_reviews.csv"
ROWS_PER_LABEL = 240

ITEMS = ["blender", "pair of headphones", "backpack", "desk lamp", "pair of running shoes", "kettle", "phone case",
         "office chair", "air fryer", "yoga mat", "water bottle", "cordless drill", "rain jacket", "keyboard",
         "frying pan", "suitcase", "electric toothbrush", "tent", "coffee grinder", "baby monitor"]
SLOTS = {
    "days": ["3", "4", "5", "8", "10", "12"],
    "weeks": ["2", "3", "6", "8"],
    "amount": ["$9", "$15", "$25", "EUR 12", "GBP 8"],
    "shop": ["Hartley Home", "GearNest", "the shop", "this seller", "BrightBuy", "Oak & Co"],
    "brand": ["Hartley Home", "GearNest", "BrightBuy", "Oak & Co"],
}

# --- the product verdict: the only part that decides the label ---------------------------------------------------
PRODUCT_GOOD = [
    "the {item} itself is excellent and works exactly as described",
    "the {item} is great quality, a really solid build",
    "I've used the {item} every day for {weeks} weeks and it still works perfectly",
    "honestly the best {item} I've ever owned",
    "the {item} does everything I wanted and more",
    "the {item} is a pleasure to use and very well made",
    "the {item} is sturdy, easy to use and looks great",
    "the {item} exceeded my expectations",
    "the {item} is worth every penny",
    "no complaints about the {item} at all, it's perfect",
    "the {item} works like a charm",
    "the build quality of the {item} is superb",
    "the {item} is lighter and quieter than my old one and I'm really happy with it",
    "my whole family loves the {item}",
    "the {item} feels premium and does the job brilliantly",
    "I'd buy this {item} again in a heartbeat",
    "the {item} was easy to set up and has worked flawlessly since",
    "after {weeks} weeks the {item} is still like new",
    "the {item} is exactly what I needed",
    "the {item} is far better than the pricier brand I had before",
    "fantastic {item}, not a single fault",
    "the {item} is reliable and cleverly designed",
    "the {item} itself? Brilliant",
    "as for the {item}, it's superb and I use it constantly",
]
PRODUCT_BAD = [
    "the {item} broke after {days} days of normal use",
    "the {item} is flimsy and feels cheap",
    "the {item} stopped working within a week",
    "the {item} doesn't do what the description says",
    "the {item} is poorly made and annoying to use",
    "honestly the worst {item} I've ever owned",
    "the {item} fell apart the first time I used it",
    "the {item} is noisy, wobbly and badly designed",
    "the {item} is a waste of money, it barely works",
    "the stitching on the {item} came undone straight away",
    "the {item} overheats and smells of burning plastic",
    "the {item} is much smaller and weaker than advertised",
    "the {item} has a faulty switch that only works half the time",
    "I regret buying the {item}, it's useless",
    "the {item} cracked within {weeks} weeks",
    "after {weeks} weeks the {item} is already falling apart",
    "the {item} is awkward to use and the instructions make no sense",
    "the {item} looks nothing like the photos and feels nasty",
    "the {item} stopped working after the second use",
    "the {item} is so poorly made it's unusable",
    "the {item} is far worse than the cheap one I had before",
    "terrible {item}, faulty from day one",
    "the {item} itself? Junk",
    "as for the {item}, it's rubbish and I've stopped using it",
]

# --- the delivery, packaging, seller or service: rated elsewhere, never the label ----------------------------------
SIDE_GOOD = [
    "delivery was super fast, it arrived the next day",
    "the seller was lovely and answered all my questions",
    "it came beautifully packaged",
    "customer service were amazing and sorted out an address change in minutes",
    "shipping was quick and the tracking was spot on",
    "the courier was friendly and even carried it upstairs",
    "{shop} threw in a free gift and a handwritten thank-you note",
    "it arrived two days earlier than promised",
    "the seller kept me updated at every step",
    "communication from {shop} was excellent",
    "the packaging was perfect, not a scratch on the box",
    "the best delivery experience I've ever had",
]
SIDE_BAD = [
    "the delivery was a nightmare, {days} days late",
    "the box arrived crushed and soaking wet",
    "the courier left it out in the rain",
    "the seller ignored my messages for a week",
    "customer service was rude and useless",
    "shipping took forever and the tracking never updated",
    "it went to the wrong address first",
    "I was charged {amount} extra for delivery with no warning",
    "the packaging was a joke, just a thin plastic bag",
    "the delivery driver threw it over the fence",
    "I had to chase {shop} three times to find out where my order was",
    "the worst delivery service I have ever dealt with",
]
CLOSE_GOOD = ["Would definitely order from {shop} again.", "Five stars for the seller!", "Thank you, {brand}!",
              "Great service all round.", "Top marks for the delivery.", ""]
CLOSE_BAD = ["Never ordering from {shop} again!", "Avoid this seller!", "Zero stars for the delivery.",
             "Absolutely furious.", "What a shambles.", ""]
OPENERS = ["", "", "", "Bought this last month.", "Ordered this as a gift.", "Second one I've bought.",
           "Long review, sorry.", "Mixed feelings.", "Where do I start."]
MIX = [("mixed", 4), ("agree", 1), ("product_only", 1)]  # two in three mixed, one in six agree, one in six alone


def _fill(text: str, rng: random.Random, item: str) -> str:
    return text.format(item=item, **{k: rng.choice(v) for k, v in SLOTS.items()})


def _sentence(s: str) -> str:
    s = s.strip()
    s = s[0].upper() + s[1:]
    return s if s[-1] in ".!?" else s + "."


def _noise(text: str, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.1:
        return text.lower().replace("'", "")
    if r < 0.2:
        return text.replace(".", "!")
    return text


def review(product_fragment: str, good: bool, kind: str, rng: random.Random) -> str:
    item = rng.choice(ITEMS)
    product = _sentence(_fill(product_fragment, rng, item))
    parts = [product]
    if kind != "product_only":
        side_good = (not good) if kind == "mixed" else good
        side = _sentence(_fill(rng.choice(SIDE_GOOD if side_good else SIDE_BAD), rng, item))
        if rng.random() < 0.25:
            side = side.upper()
        parts = [side, product] if rng.random() < 0.5 else [product, side]
        if rng.random() < 0.6:  # a closing line about the seller or the delivery, never about the product
            parts.append(_fill(rng.choice(CLOSE_GOOD if side_good else CLOSE_BAD), rng, item))
    parts.insert(0, rng.choice(OPENERS))
    return _noise(" ".join(p for p in parts if p), rng)


def generate(seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    kinds = [k for k, w in MIX for _ in range(w)]
    pools = {"positive": cycling(PRODUCT_GOOD, rng), "negative": cycling(PRODUCT_BAD, rng)}
    return unique_rows(rng, list(pools), ROWS_PER_LABEL, lambda label, made: review(
        next(pools[label]), label == "positive", kinds[made % len(kinds)], rng))


def main() -> None:
    cli(__doc__, OUT, generate)


if __name__ == "__main__":
    main()
