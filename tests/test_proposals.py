"""Proposals that are not instructions are named by their form; instructions from the papers pass."""

from __future__ import annotations

import pytest

from optimizers.proposals import instruction_problem

INSTRUCTIONS = [
    "Let's think step by step.",  # Kojima et al., the APE paper's zero-shot CoT baseline
    "Let's work this out in a step by step way to be sure we have the right answer.",  # APE's best
    "Take a deep breath and work on this problem step-by-step.",  # OPRO's best on GSM8K
    "Classify the sentiment of the review as positive or negative.",
    "Is this support ticket urgent? Answer urgent or normal.",
    "Yes or no: is the customer blocked from working?",
    "I want you to act as a support triage agent: label each ticket urgent or normal.",
    "Which option is the antecedent of the pronoun? Answer (A), (B) or (C).",
    "Answer yes or no.",
    "Respond promptly with one word: urgent when the customer cannot work, otherwise normal.",
    "Decide whether the ticket is urgent.\nUrgent: the customer cannot work, log in, pay or ship.\nNormal: anything else.",
    "Answer with the label only, for example: urgent",
    "Review the input text and decide whether it needs an urgent reply.",
    "Pick the output that best matches the input: urgent or normal.",
    "Compare the two options given and answer (A) or (B).",
    "Is the customer blocked? Answer urgent if so, or normal.",
    "Respond with either \"urgent\" or \"normal\" only.",
    "Answer urgent or not urgent.",
    "Answer A, B or C.",
    "Based on the sentence, which option is the antecedent? Answer (A), (B) or (C).",
    "Provided the customer is blocked, answer urgent; otherwise answer normal.",
    "Detailed instructions: read the ticket, then answer urgent or normal.",
    "Required format: one word, urgent or normal.",
    "Focused on the pronoun, pick (A), (B) or (C).",
    "Provide a one-word answer to classify the ticket: urgent or normal.",
    "Give the label that best describes the ticket: urgent or normal.",
    "Read the sentence you are given, then answer (A), (B) or (C).",
    "Give a brief description of the issue, then answer urgent or normal.",
    "Give more details in your explanation before the final label.",
    "Provide the details that decide it, then answer urgent or normal.",
    # "a friend" is English; "your friend" / "the friend" echo APE's induction request
    "Would this reviewer recommend the item to a friend? Answer yes or no.",
    "Use the context of the ticket: answer urgent only when the customer is blocked.",
    "Read the whole ticket details carefully. Answer urgent or normal.",
    "Give the ticket details that decide it in your answer, then answer urgent or normal.",
    # a field name followed by more than a label is a definition or a rule, not a filled slot
    "Is the customer blocked? Answer: urgent if so, otherwise normal.",
    "Label: urgent when the customer is blocked; otherwise normal.",
    'Reply in the form "Label: urgent".',
    # "provide" with the model's own output, or the input noun with more after it, is an instruction
    "Read the sentence. Provide the correct option.",
    "Provide the question's answer as (A), (B) or (C).",
    "Give the ticket a label: urgent or normal.",
    "Provide a detailed answer: finance or tech.",
    "Classify the request. Provide a specific label: finance or tech.",
]
NOT_INSTRUCTIONS = {
    "Sure, I'd be happy to help with this prompt engineering problem. Please send me the reference.": "chat_reply",
    "Certainly! Classify the ticket as urgent or normal.": "chat_reply",
    "Here is the improved version: Classify the ticket.": "chat_reply",
    "I think the rule about blocked customers is missing.": "chat_reply",
    # a request for the input, which the template gives (GPO's step-1 suffix on bbh_disambiguation_qa, session 18)
    "Which option is the antecedent? Answer (A), (B) or (C). Please provide a sentence to analyze.": "chat_reply",
    "Send me the ticket you want me to triage.": "chat_reply",
    # a sentence that only asks for the input (GPO's kept suffix in the Done-when command on bbh_disambiguation_qa,
    # session 22)
    "Which option is the antecedent of the pronoun? Answer (A), (B) or (C). Please provide the sentence and "
    "options.": "chat_reply",
    "Please share the ticket.": "chat_reply",
    # a request for a fuller input (GPO's kept suffix on request_routing, seed 1, session 23)
    "Which team should handle this request? Answer finance or tech. Please provide a detailed request in English to "
    "indicate whether it involves financial matters or technology products/services.": "chat_reply",
    "Answer urgent or normal. Send a more complete ticket if the problem is unclear.": "chat_reply",
    "Please share the review you'd like me to classify, then I will answer urgent or normal.": "chat_reply",
    # a request to the ticket's writer for more (GPO's step suffix and ProTeGi's edit on helpdesk_queues, GEPA's
    # proposal there, session 19-20)
    "Which queue should handle this ticket? Answer atlas, cobalt or juniper. Please specify the context of the "
    "ticket.": "chat_reply",
    "Answer atlas, cobalt or juniper. Please provide more context to help the assistant better understand the "
    "requirements.": "chat_reply",
    "Please provide a brief description of the issue you are experiencing.": "chat_reply",
    "Answer atlas, cobalt or juniper. Please provide more details about the ticket and your needs to receive an "
    "accurate response.": "chat_reply",
    # words between "the" and what is asked for (GPO's step-1 sample in the Done-when command on helpdesk_queues,
    # session 21)
    "Which queue should handle this ticket? Answer atlas, cobalt, or juniper. Please provide the ticket details and a "
    "brief description of the urgent issue.": "chat_reply",
    "Please share the exact error details.": "chat_reply",
    "Is this ticket urgent? This prompt can be improved by adding more specific criteria for urgency.": "commentary",
    "The original instruction does not define urgency; add a definition.": "commentary",
    "In the first example the customer is blocked, so the answer is urgent.": "reasoning_trace",
    "Example 3 was mislabelled because the tone was calm.": "reasoning_trace",
    "The correct answer is (B) because the pronoun refers to the nurse.": "reasoning_trace",
    "Is this support ticket urgent? Answer urgent or normal.\nScore: 80": "format_echo",
    # an answer slot filled with a label (PE2's kept edit in the support_triage PE2-then-demos arm, session 21)
    "Is this support ticket urgent? Label: normal": "format_echo",
    "Classify the ticket.\nAnswer: urgent": "format_echo",
    "Is this ticket urgent? If so, give the level.\nLabel: Output:": "format_echo",
    "Rewrite <INS> so that it is clearer.": "format_echo",
    "Based on the input-output pairs provided, it appears that the instruction was:": "commentary",
    "Analyze the provided input-output pairs and decide which output fits each message.": "meta_reference",
    "Provide a response for each input, based on the format of the given output \"normal\".": "meta_reference",
    "Help your friend write an output for every input based on the instructions given.": "meta_reference",
    "Write an output for every input provided in the pairs.": "meta_reference",
    "Is this support ticket urgent? Please answer yes or no.": "wrong_labels",
    "Is this support ticket urgent? Answer with 'high', 'medium' or 'low'.": "wrong_labels",
    # an edit summary (ProTeGi's kept instruction on bbh_disambiguation_qa, session 16), and others of its form
    "Corrected the secretary by understanding the problem.": "edit_report",
    "Added a rule about blocked customers. Answer urgent or normal.": "edit_report",
    "Clarified the task and the label set.": "edit_report",
    "Made it clearer which tickets are urgent.": "edit_report",
    "and": "fragment",
    "Subject: Bug": "fragment",
    "urgent": "bare_label",
    "Label: normal.": "bare_label",
}


@pytest.mark.parametrize("text", INSTRUCTIONS)
def test_instructions_pass(text):
    assert instruction_problem(text, ["urgent", "normal", "yes", "no", "(A)", "(B)", "(C)"]) is None


@pytest.mark.parametrize("text,kind", sorted(NOT_INSTRUCTIONS.items()))
def test_what_is_not_an_instruction_is_named(text, kind):
    assert instruction_problem(text, ["urgent", "normal"]) == kind


def test_a_proposal_that_is_not_an_instruction_is_rejected_with_its_reason():
    from optimizers.base import Context
    from optimizers.evaluate import Evaluator
    from tests.conftest import TOY_TASK, toy_examples

    class Nothing:
        max_concurrency, accepts_extras, model = 1, False, "x"

    ctx = Context(task=TOY_TASK, train=toy_examples(4), dev=[], initial_prompt="Classify.",
                  evaluator=Evaluator(Nothing(), TOY_TASK), optimizer_llm=Nothing())
    events = list(ctx.propose("Sure! Here is a better prompt: classify the text.", step=1, origin="generated"))
    assert events[-1].kind == "candidate_rejected" and events[-1].reason == "chat_reply"
    events = list(ctx.propose("Sure! Here is a better prompt.", step=0, origin="initial"))  # the user's own: kept
    assert events[-1].kind == "candidate_proposed"


def test_a_reference_to_examples_is_rejected_only_when_the_prompt_shows_none():
    """"Use the same input format as the examples provided" (GPO's kept suffix, request_routing seed 1) points at the
    meta-prompt's examples in a 0-shot prompt; with demonstrations it is right; the user's own prompt is kept; an
    instruction naming its own input ("the given example") is not a reference."""
    from optimizers.base import Context
    from optimizers.evaluate import Evaluator
    from optimizers.prompt import Demo, join_prompt
    from tests.conftest import TOY_TASK, toy_examples

    class Nothing:
        max_concurrency, accepts_extras, model = 1, False, "x"

    ctx = Context(task=TOY_TASK, train=toy_examples(4), dev=[], initial_prompt="Classify.",
                  evaluator=Evaluator(Nothing(), TOY_TASK), optimizer_llm=Nothing())
    text = "Classify the sentiment. Answer positive or negative, as in the examples above."
    events = list(ctx.propose(text, step=1, origin="generated"))
    assert events[-1].kind == "candidate_rejected" and events[-1].reason == "meta_reference"
    shown = join_prompt(text, [Demo.of(ctx.train[0])])
    assert list(ctx.propose(shown, step=1, origin="generated"))[-1].kind == "candidate_proposed"
    assert list(ctx.propose(text, step=0, origin="initial"))[-1].kind == "candidate_proposed"
    own = "Classify the given example: answer positive or negative."
    assert list(ctx.propose(own, step=1, origin="generated"))[-1].kind == "candidate_proposed"


@pytest.mark.parametrize("text", ["Follow this instruction, variant 3, carefully.",
                                  "Read the instructions carefully, then answer urgent or normal."])
def test_an_instruction_may_mention_instructions(text):
    assert instruction_problem(text, ["urgent", "normal"]) is None


def test_a_question_of_its_own_is_an_invented_example_for_option_labels_only():
    letters = ["(A)", "(B)", "(C)"]
    made_up = ("Which sentence identifies the antecedent? Choose one answer:\n(A) The car broke down\n"
               "(B) The engine broke down\n(C) Ambiguous")  # a 1.5B GPO proposal (session 11), in no input
    assert instruction_problem(made_up, letters) == "invented_example"
    assert instruction_problem("Answer (A) if it is the first noun, (B) the second, (C) ambiguous.", letters) is None
    assert instruction_problem("Answer with one option:\n(A)\n(B)\n(C)", letters) is None
    definitions = "Is this urgent?\nurgent: the customer is blocked\nnormal: anything else"
    assert instruction_problem(definitions, ["urgent", "normal"]) is None


def test_an_eight_word_run_of_one_input_is_an_echo_and_a_shared_preamble_is_not():
    from optimizers.data import Example
    from optimizers.proposals import echoes_example, example_inputs

    pre = "Explain the antecedent of the pronoun in the sentence below, or say it is ambiguous."
    exs = [Example(str(i), {"input": f"{pre}\nSentence: Person {i} met friend {i} at the station before noon.\n"
                                    f"Options:\n(A) Person {i}\n(B) Friend {i}\n(C) Ambiguous"}, "(A)")
           for i in range(10)]
    inputs = example_inputs(exs)
    assert echoes_example("Find the antecedent. Person 3 met friend 3 at the station before noon.", inputs)
    assert not echoes_example("Find the antecedent of the pronoun in the sentence below, or say it is ambiguous.",
                              inputs)  # every input's preamble: the task's own wording
    assert not echoes_example("Which option is the antecedent of the pronoun? Answer (A), (B) or (C).", inputs)
