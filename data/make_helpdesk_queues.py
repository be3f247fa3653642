"""Generates data/helpdesk_queues.csv: customer tickets routed to three queues whose code names say nothing about
what each one handles; the obvious prompt names the queues and leaves their remits unsaid.

    python data/make_helpdesk_queues.py            # writes data/helpdesk_queues.csv (seed 0, 480 rows)
    python data/make_helpdesk_queues.py --check    # regenerates in memory and fails if the committed file differs

House convention (a SaaS vendor's support desk): `atlas` handles getting in and who may do what (sign-in, passwords,
two-factor, single sign-on, invitations, users, roles and permissions, account ownership and deletion); `cobalt`
handles money (charges, invoices, refunds, plans and seats, payment methods, discounts, cancelling the
subscription); `juniper` handles the product itself (bugs, errors, slowness, imports and exports, integrations,
how to use a feature, feature requests). What the customer needs done decides, not the words they use: about one
ticket in five names another queue's things ("I can't log in to download my invoices" is atlas, "we removed three
users but still pay for their seats" is cobalt, "the login page is slow, once I'm in it's fine" is juniper).

This is the setting instruction induction is for: a prompt engineer starts from queue names alone, and the remits
are in the labelled examples. Greetings, sign-offs, politeness and typos are drawn independently of the label. Every
fragment below was written by hand for PromptOpt. Released under CC0-1.0 (public domain dedication), like the
generated file.
"""

from __future__ import annotations

import random
from pathlib import Path

from make_request_routing import CLOSINGS, GREETINGS, SIGNOFFS, _noise, _sentence  # shared ticket dressing
from make_support_triage import cli, cycling, unique_rows  # shared generator parts (run as a script from data/)

OUT = Path(__file__).resolve().parent / "helpdesk_queues.csv"
ROWS_PER_LABEL = 160

SLOTS = {
    "product": ["the app", "the dashboard", "the web app", "the portal", "the mobile app", "your software"],
    "name": ["Priya", "Tom", "Ana", "Marcus", "Li", "Fatima", "Jonas", "Keiko", "Daniel", "Sofia"],
    "n": ["2", "3", "5", "8", "12", "20"],
    "amount": ["$19", "$49", "$120", "$480", "EUR 35", "GBP 60"],
    "month": ["March", "April", "June", "September", "November"],
    "err": ["500", "502", "'something went wrong'", "E-2031", "a timeout", "'unexpected error'"],
    "tool": ["Slack", "Google Calendar", "Salesforce", "Zapier", "HubSpot", "Outlook"],
}

# --- what the customer needs done: the only part that decides the label ------------------------------------------
ATLAS = [  # getting in, and who may do what
    "I can't sign in, it says my password is wrong but I reset it an hour ago",
    "the password reset email never arrives",
    "please add {n} new people to our workspace",
    "{name} left the company, please remove them from our account",
    "my two-factor codes stopped working after I changed phones",
    "how do I make {name} an admin?",
    "I'm locked out after too many attempts",
    "our single sign-on stopped letting anyone in this morning",
    "I need read-only access for our external auditor",
    "can you change the email address I use to log in?",
    "please delete my account and all my personal data",
    "{name} can see projects they shouldn't, how do I restrict what they can open?",
    "the invitation link I sent to a new colleague has expired",
    "I want to transfer ownership of the workspace to {name} before I leave",
    "my account was suspended and I don't know why",
    "how do I stop {name} from editing our shared templates but still let them read them?",
    "we want everyone to use two-factor, can we make it mandatory?",
    "I never got the invite {name} sent me, can you resend it?",
    # names another queue's things
    "I can't log in to download my invoices",
    "our accountant needs to see the billing page, how do I give her that role?",
    "after the update I'm signed out and my password no longer works",
    "{name} should not be able to change our payment details, can I take that right away?",
]
COBALT = [  # money
    "I was charged {amount} twice this month",
    "please send me a copy of the invoice for {month}",
    "how do I switch from monthly to annual billing?",
    "I'd like a refund for the months we didn't use",
    "our card expires next week, how do we update it?",
    "please cancel our subscription at the end of the term",
    "we need our VAT number on the invoices",
    "why did our bill go up by {amount}?",
    "can we pay by bank transfer instead of card?",
    "please downgrade us to the basic plan",
    "the discount code from the webinar wasn't applied to our order",
    "is there a discount for nonprofits?",
    "our payment failed, what do we do now?",
    "please change the billing address on our invoices",
    "can we get a quote for {n} more seats?",
    "the receipt for {month} shows the wrong company name",
    "do you charge per user or per workspace?",
    "we were promised a free month when we signed up, but we were billed {amount}",
    # names another queue's things
    "we removed {n} users last month but we're still paying for their seats",
    "{product} says our trial has ended, how do we buy a plan?",
    "I reset my password and then noticed a {amount} charge I don't recognise",
    "the export feature we pay extra for isn't worth it, please take the add-on off our bill",
]
JUNIPER = [  # the product itself
    "the export to CSV gives me an empty file",
    "{product} crashes when I open a large project",
    "the dashboard takes over a minute to load",
    "how do I import contacts from a spreadsheet?",
    "could you add a dark mode?",
    "the {tool} integration stopped posting updates",
    "reports show times in the wrong time zone",
    "search doesn't find documents I uploaded yesterday",
    "attachments over 10 MB fail to upload",
    "is there a way to duplicate a template?",
    "every notification arrives twice",
    "the calendar view is blank in Safari",
    "the API returns {err} on every request {product} makes",
    "how do I set up a recurring task?",
    "the mobile app doesn't sync with the web version",
    "saving a form shows {err} and my changes are lost",
    "can we connect {product} to {tool}?",
    "the charts on the home page don't match the numbers in the report",
    # names another queue's things
    "the login page is really slow, once I'm in everything is fine",
    "the invoice template in {product} puts our logo over the address, how do I move it?",
    "when I invite a user to a project, the project list doesn't refresh until I reload",
    "the billing report we export for our own clients is missing the totals column",
]


def _fill(text: str, rng: random.Random) -> str:
    return text.format(**{k: rng.choice(v) for k, v in SLOTS.items()})


def ticket(fragment: str, greeting: str, closing: str, signoff: str, rng: random.Random) -> str:
    body = " ".join(p for p in [_sentence(_fill(fragment, rng)), closing, signoff] if p)
    return _noise(f"{greeting}\n{body}" if greeting else body, rng)


def generate(seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    # every part cycles through its pool per label, so each queue gets every fragment and the same dressing equally
    # often: greetings, closings and sign-offs say nothing about the queue
    parts = {label: [cycling(pool, rng) for pool in (fragments, GREETINGS, CLOSINGS, SIGNOFFS)]
             for label, fragments in (("atlas", ATLAS), ("cobalt", COBALT), ("juniper", JUNIPER))}
    return unique_rows(rng, list(parts), ROWS_PER_LABEL,
                       lambda label, made: ticket(*(next(it) for it in parts[label]), rng))


def main() -> None:
    cli(__doc__, OUT, generate)


if __name__ == "__main__":
    main()
