"""Generates data/support_triage.csv: support tickets labelled by a house rule that the obvious prompt leaves unsaid.

    python data/make_support_triage.py            # writes data/support_triage.csv (seed 0, 480 rows)
    python data/make_support_triage.py --check    # regenerates in memory and fails if the committed file differs

House rule: a ticket is `urgent` when the customer is BLOCKED (cannot work, log in, pay or take payments, ship,
or reach their data) -- whatever the tone. Everything else is `normal`: angry or emotional tickets about
non-blocking problems, cosmetic bugs, slowness with the product still usable, problems with a workaround, feature
requests, billing questions and refunds, how-to questions, account changes, complaints.

Tone, "urgent"-sounding words (URGENT, ASAP, !!!) and length are drawn independently of the label, so a model that
keys on tone scores near chance; only the situation decides the label. Every fragment below was written by hand for
PromptOpt. Released under CC0-1.0 (public domain dedication), like the generated file.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

OUT = Path(__file__).resolve().parent / "support_triage.csv"
ROWS_PER_LABEL = 240

PRODUCTS = ["Ledgerly", "ShipStack", "Docket", "PayBridge", "TeamTrack", "Mailroom", "Stockpile", "CrewDesk",
            "Invoicely", "PlanIt", "CartWheel", "Vaultbox", "Rosterly", "Clinicly", "FormFox", "the app",
            "your platform", "the dashboard", "the portal", "your software"]
NAMES = [  # the first 15 also greet the agent ("Hi Sofia,"), the rest sign tickets"Priya", "Tom", "Ana", "Marcus", "Li Wei", "Fatima", "Jonas", "Keiko", "Daniel", "Olu", "Sofia", "Raj",
         "Hannah", "Mateo", "Grace", "Yusuf", "Ingrid", "Chen", "Amara", "Pieter", "Lucia", "Sam", "Dmitri", "Noor",
         "Beth", "Kwame", "Elif", "Ravi", "Camille", "Owen"]
SITUATION_SLOTS = {
    "n": ["2", "3", "5", "12", "30", "40", "60", "200"],
    "err": ["500", "502", "403", "ERR_TIMEOUT", "E-1042", "'something went wrong'", "'invalid session'",
            "'tenant not found'", "'access denied'", "401 Unauthorized"],
    "when": ["since this morning", "since about 9am", "since last night's update", "for the past two hours",
             "since the deploy yesterday", "since we renewed", "since around lunch", "since Monday"],
    "amount": ["$12", "$49", "EUR 30", "$199", "GBP 15", "$8.99", "$450"],
}

# --- situations: the only part that decides the label ------------------------------------------------------------
BLOCKED = [  # the customer cannot work, log in, pay or take payment, ship, or reach their data
    # log in
    "I can't log in. The login page just says {err} no matter what I try.",
    "the password reset email never arrives, so I'm locked out of my account",
    "our SSO login loops straight back to the sign-in page {when}. None of us can get into {product}.",
    "my two-factor codes are rejected every time, I'm locked out",
    "my account was suspended by mistake and now I can't sign in at all",
    "nobody in our company can sign in {when} - we all get {err}",
    "after changing my email address I can no longer log in; it says the account does not exist",
    "the mobile app logs me out the moment I open it so I cannot get in on the road, and the web login fails too",
    # cannot work
    "{product} won't load past the spinner {when}, so none of us can open our projects",
    "the app crashes on launch {when}. I can't use it at all",
    "every page in {product} shows a blank white screen; we can't do any work",
    "the editor freezes as soon as I open any document, I haven't been able to work {when}",
    "all our staff see {err} when they open {product}. The whole team is stuck",
    "the whole site is down for us, just an error page {when}",
    "the scheduling page errors out so we cannot assign any shifts for today",
    "patient check-in in {product} fails with {err}, the front desk can't register anyone",
    "our {n} agents can't open any tickets in the queue, it times out every time",
    "the timesheet screen won't save anything, so payroll can't be run and it's due today",
    # pay / take payment
    "checkout fails with {err} for every customer {when}; nobody can buy anything",
    "our card was declined on renewal and the account went read-only, we can't create invoices",
    "customers can't pay their invoices, the Pay button does nothing",
    "the payment page won't accept any card {when}. We're losing every sale",
    "I can't pay my bill - the billing page errors with {err} - and now my account says it will be locked",
    "refunds and charges both fail at the terminal so the shop can't take payments at all",
    "the subscription lapsed because the card form is broken, and now we're locked out until we pay",
    # ship
    "label printing fails with {err}, so we can't ship any orders today",
    "orders are stuck in 'processing' and we can't dispatch anything {when}",
    "the carrier integration returns 'auth failed', nothing can go out today",
    "the packing slips won't generate, so the warehouse has {n} orders it cannot send",
    "I can't create shipments anymore, the button is greyed out for every order",
    "the pickup booking fails every time so our parcels are just sitting here",
    # reach data
    "our customer records page is blank, we can't see or export any of our data",
    "the API returns {err} for every request {when}, so our integration is completely down",
    "I can't open any of my files, they all say {err}",
    "the sync wiped our shared folder and we cannot get to any of the documents",
    "the reports page times out every time and I can't get at the numbers we need for today's filing",
    "the export to our accounting system fails and there's no other way to get the data out before month end",
    "we restored a backup and now the database page shows no records at all, we can't reach anything",
    "our admin account lost its permissions, we can't access the team's data or settings",
    "downloads fail with {err} so I can't get any of my invoices or statements",
]

NOT_BLOCKED = [  # annoying, wrong or unfair, but the customer can still work, log in, pay, ship and reach their data
    # cosmetic
    "the logo on our invoice PDF looks blurry",
    "the button text is misaligned in dark mode",
    "there's a typo in the welcome email your system sends our customers",
    "the dashboard chart colours changed after the update and they are really ugly now",
    "the font on the printed reports is tiny",
    "the sidebar icons overlap when the window is narrow",
    "dates show in US format even though I set UK in my profile",
    "our company name is cut off at the top of every page",
    # minor bugs / slowness, still usable
    "notifications arrive twice for every comment {when}",
    "{product} has been slow {when}, pages take about five seconds to load, but it works",
    "I can't upload a profile picture, it says {err}",
    "the avatar upload fails with {err}, so everyone sees my initials instead of my photo",
    "the 'share' button shows {err} but sharing from the menu works",
    "I can't add emojis in comments anymore {when}",
    "search doesn't find partial words, I have to type the whole name",
    "the export to PDF fails with {err}, printing from the browser works for now",
    "the mobile app crashes when I rotate the phone {when}, the desktop version is fine",
    "sorting by date in the orders list puts March before January",
    "the 'remember me' box doesn't work so I have to log in every morning",
    "the weekly summary email arrives a day late",
    "drag and drop doesn't work in Firefox, it does in Chrome",
    "the unread counter says {n} but there's nothing unread",
    "the CSV export puts the columns in a weird order, I fix it in Excel",
]
REQUESTS = [  # not blocked either: asks and questions, no malfunction (problem details would not fit them)
    # feature requests
    "please add a dark mode",
    "it would be great to export the activity log as CSV",
    "can you add keyboard shortcuts for the common actions",
    "we need bulk editing of tags, doing {n} items one by one is painful",
    "please let us set a default currency per client",
    "could the calendar sync with Outlook and not only Google",
    "I'd like to be able to schedule reports to go out on Fridays",
    "add an option to hide archived projects from the list",
    # billing questions / refunds
    "why was I charged {amount} more this month?",
    "can I get an invoice with our VAT number on it",
    "how do I switch to annual billing",
    "I was double charged {amount} last month and want a refund",
    "your new pricing is outrageous, {amount} more for the same features",
    "the receipt shows the wrong company address",
    "I'm still being charged for a seat I removed in {when_month}",
    "do you offer a discount for nonprofits",
    # how-to / account admin
    "how do I add a teammate to our workspace",
    "where do I turn off the email notifications",
    "please change the email on our account to the new domain",
    "I want to cancel my subscription at the end of the term",
    "how do I merge two duplicate customer records",
    "can you explain what the 'pending' status means on an order",
    "is there a way to undo an archive",
    # complaints
    "your support agent was rude to me on the phone yesterday",
    "I've been waiting three days for an answer to my last email",
    "the new layout is confusing and I liked the old one better",
    "you changed the menu again without telling anyone",
]
QUESTION_WORDS = {"how", "why", "where", "what", "can", "could", "do", "is", "are", "does"}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]

# --- label-neutral fragments --------------------------------------------------------------------------------------
GREETINGS = ["Hi,", "Hello,", "Hi team,", "Hey,", "Dear support,", "Good morning,", "To whom it may concern,",
             "Hi there,", "Hello support team,", "Yo,", "", "", "", "Hi {name_to},", "Dear Sir or Madam,"]
CONTEXTS = [
    "We're a small bakery using {product} for our online orders.",
    "I manage IT for a 30-person law firm.",
    "Long-time customer here, since 2019.",
    "I'm on the Pro plan.",
    "We moved over to {product} from another tool last month.",
    "I run a two-person Etsy shop.",
    "I'm the office manager at a dental clinic.",
    "We have about {n} users on the business plan.",
    "I'm writing on behalf of our finance team.",
    "First time contacting you.",
    "I'm a freelancer and use {product} every day.",
    "We're a warehouse in Rotterdam shipping around {n} parcels a day.",
    "Our nonprofit uses {product} for volunteer scheduling.",
    "I look after the accounts for three restaurants.",
]
DETAILS = [
    "I already cleared the cache and tried another browser.",
    "Screenshot attached.",
    "This started after yesterday's update.",
    "Our account ID is {acct}.",
    "I'm on Windows 11 with Chrome.",
    "I tried on my phone too, same thing.",
    "My colleague sees it as well.",
    "I restarted everything twice.",
    "I checked your status page and it says all systems operational.",
    "It happens every single time.",
    "I'm on a Mac, latest Safari.",
    "We haven't changed anything on our side.",
]
BLOCKED_IMPACT = ["The whole team is sitting idle.", "Nobody here can do anything until this is fixed.",
                  "I literally cannot do my job right now.", "We have {n} orders waiting.",
                  "There is no workaround that I can find.", "Everything is on hold because of this.",
                  "We're completely stuck.", "Customers are waiting on us."]
NOT_BLOCKED_IMPACT = ["Everything else works fine.", "We can live with it for now.",
                      "It's not stopping us from working, but still.", "Not a blocker, just annoying.",
                      "We found a way around it in the meantime.", "Otherwise things are OK.",
                      "It doesn't stop anything, it just looks unprofessional.", "I can still do my work."]
TONES = {
    "calm": {"open": ["Hope you're well.", "Thanks in advance for your help.", "Quick one for you.",
                      "Just flagging something.", "Sorry to bother you.", ""],
             "close": ["Could you take a look when you get a chance?", "No big rush on the reply.",
                       "Let me know if you need anything from me.", "Thanks!", "Appreciate it.",
                       "Whenever someone has a moment.", "Many thanks."]},
    "angry": {"open": ["I am FURIOUS.", "This is the third time I'm writing about this.",
                       "Honestly, what are you people doing over there?", "Unbelievable.",
                       "I'm paying good money for this.", "I've had it with this product."],
              "close": ["Fix it NOW.", "This is completely unacceptable.", "If this isn't sorted I'm cancelling.",
                        "I expect a reply today.", "Do better.", "Absolutely ridiculous.",
                        "I want to speak to a manager."]},
    "anxious": {"open": ["I'm really stressed about this.", "Please help, I don't know what to do.",
                         "I'm panicking a bit here.", "Sorry, I'm not very technical.",
                         "My boss is going to kill me."],
                "close": ["Please please help.", "I'm really worried.", "I hope someone can help me soon.",
                          "Any help would mean a lot.", "I'm close to tears honestly."]},
    "terse": {"open": [""], "close": ["", "Thx.", "Pls advise.", "ETA?"]},
    "sarcastic": {"open": ["Great job with the latest update, really.", "Love paying for software that does this.",
                           "Another wonderful day with {product}."],
                  "close": ["Keep up the amazing work.", "Can't wait to see what breaks next.",
                            "Thanks for nothing, I guess."]},
    "formal": {"open": ["I am writing with regard to our account.",
                        "Please find my message below.", "I would like to bring the following to your attention."],
               "close": ["I would be grateful for your prompt assistance.", "Kind regards.",
                         "I look forward to your response."]},
}
ASKS = ["Please fix this.", "Can someone call me?", "What's the ETA?", "Let me know.", "Any idea?",
        "Please advise.", "Can you check?", "What should I do?", "Is this a known issue?", ""]
URGENCY = ["URGENT:", "URGENT!!!", "ASAP please.", "!!!", "HIGH PRIORITY.", "Need this today.",
           "Please treat as priority."]
SUBJECTS = ["Help", "Problem", "Question", "Issue with {product}", "Support request", "Re: my ticket",
            "Account", "Please read", "Feedback", "Bug?", "Quick question", "Complaint"]
SIGNOFFS = ["Thanks, {name}", "- {name}", "Regards,\n{name}", "{name}", "Sent from my iPhone", "", "", "Cheers, {name}",
            "Best,\n{name} ({role})", "Thank you\n{name}"]
ROLES = ["Ops lead", "Owner", "Office manager", "Finance", "IT admin", "CTO", "Store manager", "Head nurse"]


def _fill(text: str, rng: random.Random, product: str) -> str:
    values = {k: rng.choice(v) for k, v in SITUATION_SLOTS.items()}
    values.update(product=product, name=rng.choice(NAMES[15:]), role=rng.choice(ROLES),
                  name_to=rng.choice(NAMES[:15]) if rng.random() < 0.5 else "support",
                  acct=f"{rng.randrange(10000, 99999)}", when_month=rng.choice(MONTHS))
    return text.format(**values)


def _sentence(s: str) -> str:
    s = s.strip()
    if not s:
        return s
    s = s[0].upper() + s[1:]
    if s[-1] in ".!?":
        return s
    return s + ("?" if s.split(" ")[0].lower() in QUESTION_WORDS else ".")


def _typos(text: str, rng: random.Random) -> str:
    """A few human slips: dropped apostrophes, swapped or doubled letters, a lower-cased ticket."""
    style = rng.random()
    if style < 0.35:
        text = text.replace("'", "")
    if style < 0.15:
        text = text.lower()
    words = text.split(" ")
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(words))
        w = words[i]
        if len(w) >= 4 and w.isalpha():
            j = rng.randrange(1, len(w) - 2)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:] if rng.random() < 0.6 else w[:j] + w[j] + w[j:]
    return " ".join(words)


def ticket(situation: str, blocked: bool, rng: random.Random) -> str:
    problem = situation not in REQUESTS
    product = rng.choice(PRODUCTS)
    tone_name = rng.choice(list(TONES))
    tone = TONES[tone_name]
    length = rng.choices(["short", "medium", "long"], weights=[3, 4, 3])[0]
    body = [_sentence(_fill(situation, rng, product))]
    if length != "short" and problem:
        if rng.random() < 0.5:
            pool = BLOCKED_IMPACT if blocked else NOT_BLOCKED_IMPACT
            body.append(_fill(rng.choice(pool), rng, product))
        if rng.random() < 0.6:
            body.append(_fill(rng.choice(DETAILS), rng, product))
    if length == "long":
        body.insert(0, _fill(rng.choice(CONTEXTS), rng, product))
        if problem and rng.random() < 0.5:
            body.append(_fill(rng.choice(DETAILS), rng, product))
    opening = _fill(rng.choice(tone["open"]), rng, product)
    closing = _fill(rng.choice(tone["close"]), rng, product)
    if length == "short" and rng.random() < 0.5:
        opening = ""
    parts = [opening] + body + [closing]
    if rng.random() < 0.5:
        parts.append(rng.choice(ASKS))
    if rng.random() < 0.3:  # urgency words, independent of the label
        parts.insert(0, rng.choice(URGENCY)) if rng.random() < 0.6 else parts.append(rng.choice(URGENCY))
    text = " ".join(p for p in parts if p)
    if tone_name == "angry" and rng.random() < 0.3:
        text = text.replace(".", "!", 1)
    if tone_name == "terse" and rng.random() < 0.6:
        text = text.rstrip(".")
    greeting = _fill(rng.choice(GREETINGS), rng, product) if length != "short" or rng.random() < 0.4 else ""
    signoff = _fill(rng.choice(SIGNOFFS), rng, product) if length != "short" or rng.random() < 0.3 else ""
    sep = rng.choice(["\n", " ", "\n\n"])
    out = sep.join(p for p in [greeting, text, signoff] if p)
    if rng.random() < 0.25:
        out = _typos(out, rng)
    if rng.random() < 0.3:
        out = f"Subject: {_fill(rng.choice(SUBJECTS), rng, product)}\n{out}"
    return out


def generate(seed: int = 0, per_label: int = ROWS_PER_LABEL) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pools = {"urgent": (cycling(BLOCKED, rng), True), "normal": (cycling(NOT_BLOCKED + REQUESTS, rng), False)}
    return unique_rows(rng, list(pools), per_label, lambda label, made: ticket(next(pools[label][0]),
                                                                                pools[label][1], rng))


def cycling(pool: list[str], rng: random.Random) -> Iterator[str]:
    """The pool's fragments in a fresh shuffle, again and again: every fragment is used about equally often."""
    while True:
        order = pool[:]
        rng.shuffle(order)
        yield from order


def unique_rows(rng: random.Random, labels: list[str], per_label: int,
                draw: Callable[[str, int], str]) -> list[tuple[str, str]]:
    """`per_label` distinct texts for each label in turn (`draw(label, made)` makes a candidate), then shuffled."""
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    for label in labels:
        made = 0
        while made < per_label:
            text = draw(label, made)
            if text not in seen:
                seen.add(text)
                rows.append((text, label))
                made += 1
    rng.shuffle(rows)
    return rows


def to_csv(rows: list[tuple[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["text", "label"])
    w.writerows(rows)
    return buf.getvalue()


def cli(doc: str, out: Path, generate) -> None:
    """The command line every generated set shares: write the file, or --check it against a regeneration."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=out)
    ap.add_argument("--check", action="store_true", help="fail if the file on disk differs from a regeneration")
    a = ap.parse_args()
    text = to_csv(generate(a.seed))
    if a.check:
        same = a.out.is_file() and a.out.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{a.out} differs from a regeneration with seed {a.seed}")
        sys.exit(0 if same else 1)
    a.out.write_text(text, encoding="utf-8")
    print(f"wrote {a.out} ({text.count(chr(10)) - 1} lines incl. multi-line rows)")


def main() -> None:
    cli(__doc__, OUT, generate)


if __name__ == "__main__":
    main()
