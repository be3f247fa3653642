"""Generates data/request_routing.csv: internal helpdesk requests routed to a team by a budget rule that the obvious
prompt leaves unsaid.

    python data/make_request_routing.py            # writes data/request_routing.csv (seed 0, 480 rows)
    python data/make_request_routing.py --check    # regenerates in memory and fails if the committed file differs

House rule: the tech team owns all software and devices, including paying for them. A request is `tech` when it is
about software, an app, a licence, a subscription, seats, or a device (laptop, phone, monitor, ...): buying, renewing,
paying for, cancelling or fixing it, and any technical problem. It is `finance` when it is about money for
anything else: travel, expenses and reimbursements, pay, hotels, catering, rent, suppliers of other goods and
services.

Two in three tech requests are about money (an invoice, a renewal, a price, a purchase), worded like the finance
requests ("the ... invoice for $450 is due on Friday, can someone pay it?"), so invoices, amounts and payment words
do not give the label away; only what the money is for decides. Greetings, sign-offs, politeness and typos are
drawn independently of the label. Every fragment below was written by hand for PromptOpt. Released under CC0-1.0
(public domain dedication), like the generated file.
"""

from __future__ import annotations

import random
from pathlib import Path

from make_support_triage import cli, unique_rows  # shared generator parts (run as a script from data/)

OUT = Path(__file__).resolve().parent / "request_routing.csv"
ROWS_PER_LABEL = 240

SLOTS = {
    "sw": ["Figma", "Slack", "Zoom", "Adobe Creative Cloud", "Jira", "GitHub", "Salesforce", "Notion",
           "Microsoft 365", "Dropbox", "the design software", "our CRM", "the antivirus software"],
    "device": ["laptop", "monitor", "phone", "headset", "docking station", "tablet", "webcam"],
    "supplier": ["the catering company", "our cleaning contractor", "the office landlord", "the print shop",
                 "the courier company", "the events agency", "the translation agency", "the furniture supplier"],
    "amount": ["$45", "$120", "$450", "$1,200", "$4,800", "EUR 300", "GBP 90"],
    "n": ["3", "5", "8", "12", "20"],
    "city": ["Berlin", "Chicago", "Lyon", "Austin", "Leeds", "Madrid"],
    "month": ["March", "April", "June", "September", "November"],
}

# --- what the request is about: the only part that decides the label ---------------------------------------------
TECH_MONEY = [  # paying for, buying, renewing or cancelling software or devices: tech
    "the {sw} renewal invoice for {amount} is due on Friday, can someone pay it?",
    "we need {n} more {sw} seats for the new hires, who can buy them?",
    "can we cancel our {sw} subscription? Nobody uses it and it costs {amount} a month",
    "I was charged {amount} for a {sw} licence I never asked for",
    "please order me a new {device}, mine is five years old",
    "can I get approval to buy a {device} for {amount}?",
    "our {sw} plan needs upgrading to the business tier, how do we pay for that?",
    "the {sw} trial ends tomorrow, can someone put a card on it?",
    "who approves the purchase of a {sw} licence for our contractor?",
    "we got a price increase notice from {sw}: {amount} more per year. Can we negotiate?",
    "the {device} I ordered last month hasn't arrived, can you chase the supplier?",
    "can we get a quote for {n} new {device}s for the sales team?",
    "the {sw} invoice lists {n} users but only half of them still work here",
    "our {sw} card payment failed and they'll suspend the account on {month} 1st",
    "I need budget for a {sw} licence to do my job, who signs that off?",
    "we're paying for {sw} twice, once on the team plan and once on my card",
]
TECH_PROBLEM = [  # technical problems: tech
    "my {device} won't turn on",
    "I can't log in to {sw}, it says my account is locked",
    "{sw} keeps crashing when I share my screen",
    "the wifi on the third floor keeps dropping",
    "I need access to the marketing team's shared drive",
    "my {device} screen is cracked",
    "the printer on floor 2 says it's offline",
    "can you reset my VPN password?",
    "email isn't syncing on my phone",
    "{sw} says I don't have permission to open this file",
]
FINANCE = [  # money for anything else: finance
    "my expense report for the {city} trip was rejected, why?",
    "I haven't been reimbursed for the client dinner ({amount}) from last month",
    "the invoice from {supplier} for {amount} is due on Friday, can someone pay it?",
    "can I get approval to book a train to {city} for {amount}?",
    "my salary for {month} is missing the overtime",
    "please raise my corporate card limit, I have a conference to pay for",
    "we got a price increase notice from {supplier}: {amount} more per year. Can we negotiate?",
    "who approves the catering budget for the offsite?",
    "I was charged {amount} twice for the hotel in {city}",
    "can we cancel the contract with {supplier}? It costs {amount} a month",
    "the invoice from {supplier} lists {n} hours but they only worked half of that",
    "I need an advance of {amount} for the trade fair in {city}",
    "our payment to {supplier} bounced and they're threatening late fees",
    "how do I claim back the {amount} I spent on taxis in {city}?",
    "what's the daily allowance for a trip to {city}?",
    "the office rent invoice for {month} looks too high",
    "can we get a quote from {supplier} for the summer party?",
    "who signs off the {amount} deposit for the {city} conference venue?",
]
GREETINGS = ["", "", "Hi,", "Hello team,", "Hey,", "Hi all,", "Good morning,"]
CLOSINGS = ["", "", "Thanks!", "Thanks in advance.", "Cheers.", "Sorry if this is the wrong place.",
            "Let me know if you need anything from me.", "No rush.", "Bit urgent, sorry."]
SIGNOFFS = ["", "", "", "- Priya", "- Tom (Sales)", "Ana, Marketing", "Marcus", "Li (Ops)", "- Fatima"]


def _fill(text: str, rng: random.Random) -> str:
    return text.format(**{k: rng.choice(v) for k, v in SLOTS.items()})


def _sentence(s: str) -> str:
    s = s.strip()
    s = s[0].upper() + s[1:]
    return s if s[-1] in ".!?" else s + "."


def _noise(text: str, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.12:
        return text.lower().replace("'", "")
    if r < 0.2:
        return text.replace("?", "??")
    return text


def request(fragment: str, rng: random.Random) -> str:
    body = " ".join(p for p in [_sentence(_fill(fragment, rng)), rng.choice(CLOSINGS), rng.choice(SIGNOFFS)] if p)
    greeting = rng.choice(GREETINGS)
    return _noise(f"{greeting}\n{body}" if greeting else body, rng)


def generate(seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pools = {"tech": [(TECH_MONEY, 2), (TECH_PROBLEM, 1)], "finance": [(FINANCE, 1)]}

    def draw(label: str, made: int) -> str:
        weighted = pools[label]
        return request(rng.choice(rng.choices([p for p, _ in weighted], weights=[w for _, w in weighted])[0]), rng)

    return unique_rows(rng, list(pools), ROWS_PER_LABEL, draw)


def main() -> None:
    cli(__doc__, OUT, generate)


if __name__ == "__main__":
    main()
