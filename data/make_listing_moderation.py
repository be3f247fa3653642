"""Generates data/listing_moderation.csv: messages on a second-hand marketplace, labelled by a house rule that the
obvious prompt leaves unsaid.

    python data/make_listing_moderation.py            # writes data/listing_moderation.csv (seed 0, 480 rows)
    python data/make_listing_moderation.py --check    # regenerates in memory and fails if the committed file differs

House rule: a message is `remove` when it takes the deal off the platform: it gives or asks for a phone number, an
email address or a handle on another app, or asks to pay or be paid outside the site's checkout (bank transfer,
cash app, gift card, a payment link). Everything else is `keep`, however rude, angry, shouty or spammy-sounding it
is: haggling, insults about the price, complaints, questions about the item, shipping and returns through the site,
numbers that are not contact details (prices, order and tracking numbers, sizes).

Tone (friendly, curt, rude, pushy salesman, anxious), capitals and exclamation marks, length and typos are drawn
independently of the label, so a model that removes what sounds rude or scammy scores near chance; only the
off-platform move decides the label. Every fragment below was written by hand for PromptOpt. Released under CC0-1.0
(public domain dedication), like the generated file.
"""

from __future__ import annotations

import random
from pathlib import Path

from make_support_triage import cli, unique_rows  # shared generator parts (run as a script from data/)

OUT = Path(__file__).resolve().parent / "listing_moderation.csv"
ROWS_PER_LABEL = 240

ITEMS = ["bike", "sofa", "camera", "guitar", "stroller", "desk", "phone", "laptop", "jacket", "lamp", "drone",
         "coffee machine", "dining table", "pair of boots", "tent", "record player", "monitor", "rug", "kayak",
         "sewing machine"]
NAMES = ["Priya", "Tom", "Ana", "Marcus", "Li", "Fatima", "Jonas", "Keiko", "Dan", "Olu", "Sofia", "Raj", "Hannah",
         "Mateo", "Grace", "Yusuf", "Ingrid", "Chen", "Amara", "Pieter"]
SLOTS = {
    "price": ["$20", "$35", "$40", "$60", "$75", "$120", "$150", "$300", "EUR 45", "GBP 80"],
    "phone": ["555-0142", "(555) 013-7789", "+44 7700 900321", "555 0199", "07700 900 456", "+1 555 010 2233"],
    "email": ["jm.deals@mailbox.example", "sofia88@inbox.example", "sellfast@post.example", "r.k@webmail.example"],
    "handle": ["@bikeguy_77", "@sofia.sells", "@quickdeals", "@tom_k"],
    "app": ["WhatsApp", "Telegram", "Signal", "Instagram", "Snapchat"],
    "payapp": ["Venmo", "Zelle", "Cash App", "PayPal friends and family", "a bank transfer", "Western Union"],
    "order": ["#48213", "#10577", "#99120", "#23456"],
    "tracking": ["1Z999AA10123456784", "9400 1000 0000 0000 0000 00", "LX123456789GB"],
    "days": ["2", "3", "5", "7", "10"],
}

# --- situations: the only part that decides the label ------------------------------------------------------------
OFF_PLATFORM = [  # contact details or payment outside the site: remove
    "text me at {phone} and we can sort out the {item}",
    "call me on {phone}, it's quicker than this chat",
    "my number is {phone}, message me there about the {item}",
    "email me at {email} and I'll send more photos of the {item}",
    "send your offer for the {item} to {email}",
    "add me on {app}, I'm {handle}, we can finish the deal there",
    "find me on {app} ({handle}) and I'll hold the {item} for you",
    "what's your phone number? I'd rather talk about the {item} by phone",
    "give me your email and I'll send you the receipt for the {item} directly",
    "I only take {payapp} for the {item}, not the site's checkout",
    "pay me with {payapp} and I'll knock {price} off the {item}",
    "skip the checkout, send {price} by {payapp} and the {item} is yours",
    "I can pay cash or {payapp} if you cancel the listing and sell me the {item} directly",
    "pay through this link instead of the checkout: pay-now.example/{handle}",
    "can you pay with a gift card? Send me the code and I'll ship the {item}",
    "let's move this off the site, the fees are a rip-off. Reach me on {app} at {phone}",
    "I'll give you {price} for the {item} if you message me on {app} instead",
    "contact me at {email} or {phone}, I don't check this app",
]
ON_PLATFORM = [  # everything the site's own chat, checkout and shipping handle: keep
    "would you take {price} for the {item}?",
    "is the {item} still available?",
    "{price} for that {item}? You must be joking",
    "does the {item} have any scratches? Can you post more photos here?",
    "I bought the {item} (order {order}) and it arrived broken",
    "the tracking number {tracking} hasn't moved in {days} days",
    "can you ship the {item} through the site's shipping option?",
    "I'll buy the {item} now with the Buy Now button if you drop it to {price}",
    "this {item} is overpriced junk and you know it",
    "message me here in the app chat if you want to haggle over the {item}",
    "I've sent a return request for the {item} through the site, order {order}",
    "what size is the {item}? The listing doesn't say",
    "you never replied about the {item}, worst seller on this site",
    "lowest price on the {item} is {price}, take it or leave it",
    "I already paid through checkout for the {item}, when will you ship it?",
    "left you a one-star review, the {item} was nothing like the photos",
    "can I pick up the {item} in person and pay through the app when I get there?",
    "my phone died so I missed your message, is the {item} still for sale?",
]

# --- label-neutral fragments --------------------------------------------------------------------------------------
TONES = {
    "friendly": {"open": ["Hi!", "Hello there,", "Hey, hope you're well.", "Hi {name},", "Good morning!", ""],
                 "close": ["Thanks so much!", "Have a lovely day.", "Cheers!", "Thank you :)", ""]},
    "curt": {"open": ["", "", "Re: {item}.", "Listing question."],
             "close": ["", "Thanks.", "Reply soon.", "Ok?"]},
    "rude": {"open": ["Seriously?", "Listen,", "Are you kidding me?", "Ugh.", "Wow."],
             "close": ["Don't waste my time.", "Pathetic.", "Get a grip.", "Clown.", "Whatever."]},
    "pushy": {"open": ["DEAL OF THE WEEK!!!", "ACT FAST!", "Don't miss out!", "LAST CHANCE!!", "Hey friend!!!"],
              "close": ["First come first served!!!", "Limited time only!", "You won't regret it!!",
                        "Serious buyers only!!!", "Hurry, others are interested!"]},
    "anxious": {"open": ["Sorry to bother you,", "Hi, sorry, quick one -", "I'm a bit nervous about this but"],
                "close": ["Sorry again!", "Hope that's ok.", "Please let me know, I really need it.",
                          "I hope this isn't a scam, sorry for asking."]},
}
SIGNOFFS = ["- {name}", "{name}", "", "", "", "Sent from my phone", "Thanks, {name}"]


def _fill(text: str, rng: random.Random, item: str) -> str:
    values = {k: rng.choice(v) for k, v in SLOTS.items()}
    return text.format(item=item, name=rng.choice(NAMES), **values)


def _sentence(s: str) -> str:
    s = s.strip()
    s = s[0].upper() + s[1:]
    return s if s[-1] in ".!?" else s + "."


def _noise(text: str, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.15:
        return text.upper()
    if r < 0.3:
        return text.lower().replace("'", "")
    if r < 0.45:
        return text.replace(".", "!!")
    return text


def message(situation: str, rng: random.Random) -> str:
    item = rng.choice(ITEMS)
    tone = TONES[rng.choice(list(TONES))]
    opening, body = _fill(rng.choice(tone["open"]), rng, item), _sentence(_fill(situation, rng, item))
    if opening and opening[-1] not in ".!?,":  # "... but the tracking number ...", "quick one - is the ..."
        body = body[0].lower() + body[1:]
    parts = [opening, body, _fill(rng.choice(tone["close"]), rng, item)]
    if rng.random() < 0.4:
        parts.append(_fill(rng.choice(SIGNOFFS), rng, item))
    return _noise(" ".join(p for p in parts if p), rng)


def generate(seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pools = {"remove": OFF_PLATFORM, "keep": ON_PLATFORM}

    def draw(label: str, made: int) -> str:  # every situation once, then drawn at random
        pool = pools[label]
        return message(pool[made % len(pool)] if made < len(pool) else rng.choice(pool), rng)

    return unique_rows(rng, list(pools), ROWS_PER_LABEL, draw)


def main() -> None:
    cli(__doc__, OUT, generate)


if __name__ == "__main__":
    main()
