"""The embedded ``keel:extractive`` model, on the real bundled embedding model."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from pydantic import BaseModel

from keel.agents.context import render_user_turn
from keel.agents.extractive import (
    MODEL_ID,
    REFUSAL,
    ExtractiveChatModel,
    extract_arguments,
    split_sentences,
)
from keel.rag.embeddings import Embedder
from keel.rag.types import Hit

BILLING = """# Refunds

You can ask for a refund within 30 days of purchase. Refunds are issued to the original
payment method, e.g. your credit card. Money returns in 5–10 business days."""
PLANS = """- Basic: 3 seats and email support.
- Pro: 20 seats and priority support. It costs $12.50 per seat.
- Enterprise: unlimited seats and single sign-on."""
OFFICE = "Our office is in Berlin. The team meets every Monday at 9 a.m. in the big room."

CALCULATOR: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression and return the result.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
        "x-keel-examples": ["what is 2 + 2?", "compute 15 * 4", "how much is 100 / 7"],
    },
}
LOOKUP_ORDER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Look up the status of a customer order by its id.",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string", "pattern": r"^ORD-\d+$"}},
            "required": ["order_id"],
        },
    },
}
CHANGE_PLAN: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "change_plan",
        "description": "Change the subscription plan of the account.",
        "parameters": {
            "type": "object",
            "properties": {
                "plan": {"type": "string", "enum": ["basic", "pro", "enterprise"]},
                "seats": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
            },
            "required": ["plan"],
        },
        "x-keel-examples": ["switch me to the pro plan", "upgrade my plan to enterprise"],
    },
}
TOOLS = [CALCULATOR, LOOKUP_ORDER, CHANGE_PLAN]


@pytest.fixture(scope="session")
def embedder(model_cache_dir: Path) -> Embedder:
    # model_cache_dir is tmp_path_factory.mktemp(...): the ONNX export is shared by the session
    return Embedder(cache_dir=model_cache_dir)


@pytest.fixture(scope="session")
def model(embedder: Embedder) -> ExtractiveChatModel:
    return ExtractiveChatModel(embedder=embedder)


@pytest.fixture(scope="session")
def with_tools(model: ExtractiveChatModel) -> ExtractiveChatModel:
    bound = model.bind_tools(TOOLS)
    assert isinstance(bound, ExtractiveChatModel)
    return bound


def hit(text: str, source: str) -> Hit:
    return Hit(doc_id=source, chunk_id=f"{source}#0", text=text, score=1.0, source=source)


def turn(question: str, *texts: str) -> list[HumanMessage]:
    hits = [hit(t, f"docs/{i}.md") for i, t in enumerate(texts, start=1)]
    return [HumanMessage(render_user_turn(question, hits))]


def ask(model: Any, question: str, *texts: str) -> AIMessage:
    reply = model.invoke(turn(question, *texts))
    assert isinstance(reply, AIMessage)
    return reply


# -- answers from passages -------------------------------------------------------------------


def test_answers_with_the_relevant_sentences_and_citations(model: ExtractiveChatModel) -> None:
    reply = ask(model, "How long do I have to ask for a refund?", BILLING, PLANS, OFFICE)
    text = reply.text
    assert text.startswith("You can ask for a refund within 30 days of purchase")
    assert "[1]" in text and "Berlin" not in text and "seats" not in text
    citations = reply.response_metadata["keel_citations"]
    assert citations[0]["n"] == 1
    assert citations[0]["sentence"] == "You can ask for a refund within 30 days of purchase."
    assert all(c["n"] == 1 and c["score"] >= model.relevance_threshold for c in citations)
    assert [c["score"] for c in citations] == sorted((c["score"] for c in citations), reverse=True)
    assert reply.response_metadata["keel_refusal"] is False
    assert reply.response_metadata["model_name"] == MODEL_ID
    assert reply.response_metadata["finish_reason"] == "stop"
    assert reply.tool_calls == []

    office = ask(model, "Where is the office?", BILLING, PLANS, OFFICE)
    assert office.text.startswith("Our office is in Berlin [3].")


def test_passages_seen_before_are_not_embedded_again(model_cache_dir: Path) -> None:
    embedder = Embedder(cache_dir=model_cache_dir)
    model = ExtractiveChatModel(embedder=embedder)
    first = ask(model, "How long do I have to ask for a refund?", BILLING, PLANS)
    before = embedder.encoded
    ask(model, "Can I get my money back after a month?", BILLING, PLANS)
    assert embedder.encoded == before + 1  # the new question only: the sentences are kept
    # the kept vectors give the answer the fresh ones gave
    assert ask(model, "How long do I have to ask for a refund?", BILLING, PLANS).text == first.text


def test_cites_each_passage_a_sentence_comes_from(model: ExtractiveChatModel) -> None:
    reply = ask(
        model,
        "How long do refunds take to arrive?",
        "You can ask for a refund within 30 days of purchase.",
        "Refunds are paid back to your card within 5 to 10 business days.",
    )
    assert reply.text == (
        "Refunds are paid back to your card within 5 to 10 business days [2]. "
        "You can ask for a refund within 30 days of purchase [1]."
    )
    assert [c["n"] for c in reply.response_metadata["keel_citations"]] == [2, 1]


def test_a_run_of_sentences_from_one_passage_is_cited_once(model: ExtractiveChatModel) -> None:
    reply = ask(model, "How do refunds work and when does the money come back?", BILLING)
    assert reply.text.count("[1]") == 1 and reply.text.endswith("[1].")
    assert len(reply.response_metadata["keel_citations"]) >= 2


def test_refuses_without_passages(model: ExtractiveChatModel) -> None:
    reply = model.invoke([HumanMessage("How long do I have to ask for a refund?")])
    assert reply.text == REFUSAL == "I don't know: the documents I have do not answer this."
    assert reply.response_metadata["keel_refusal"] is True
    assert reply.response_metadata["keel_citations"] == []


def test_refuses_when_no_passage_is_relevant(model: ExtractiveChatModel) -> None:
    reply = ask(
        model,
        "How long do I have to ask for a refund?",
        "The cafeteria serves lunch from noon. Parking is free on weekends.",
        OFFICE,
    )
    assert reply.text == REFUSAL
    assert reply.response_metadata["keel_refusal"] is True


def test_mmr_leaves_out_near_duplicate_sentences(embedder: Embedder) -> None:
    model = ExtractiveChatModel(embedder=embedder, max_sentences=2)
    reply = ask(
        model,
        "How long do I have to ask for a refund?",
        "You can ask for a refund within 30 days of purchase.",
        "You can request a refund within 30 days of purchase.",
        "Refunds are paid back to your card within 5 to 10 business days.",
    )
    sentences = [c["sentence"] for c in reply.response_metadata["keel_citations"]]
    assert len(sentences) == 2
    assert sum("within 30 days of purchase" in s for s in sentences) == 1
    assert "Refunds are paid back to your card within 5 to 10 business days." in sentences


def test_the_same_sentence_in_two_passages_is_said_once_with_both_citations(
    model: ExtractiveChatModel,
) -> None:
    same = "You can ask for a refund within 30 days of purchase."
    reply = ask(model, "How long do I have to ask for a refund?", same, OFFICE, same)
    assert reply.text.startswith("You can ask for a refund within 30 days of purchase [1][3].")
    assert reply.text.count("within 30 days") == 1


def test_sentence_splitter_keeps_abbreviations_decimals_list_items_and_table_rows() -> None:
    text = (
        "# Title\n\nPay by card, e.g. Visa or Mastercard. The fee is 2.5 percent of the total.\n"
        "Prices are shown\nwithout tax. Done!\n\n- First item in a list\n* Second item here\n"
        "1. Numbered item three\n| a | b |\n|---|---|\n| Pro | 20 seats |\nShort."
    )
    assert split_sentences(text) == [
        "Pay by card, e.g. Visa or Mastercard.",
        "The fee is 2.5 percent of the total.",
        "Prices are shown without tax.",
        "First item in a list",
        "Second item here",
        "Numbered item three",
        "a: Pro; b: 20 seats",  # a table row reads with its column names, the header is dropped
    ]


# -- tools -----------------------------------------------------------------------------------


def test_calls_a_calculator_with_the_expression_from_the_question(
    with_tools: ExtractiveChatModel,
) -> None:
    reply = ask(with_tools, "what is 12 * (3 + 4)?")
    assert reply.text == ""
    [call] = reply.tool_calls
    assert call["name"] == "calculator"
    assert call["args"] == {"expression": "12 * (3 + 4)"}
    assert call["id"] and call["id"].startswith("call_")
    assert call.get("type") == "tool_call"
    routing = reply.response_metadata["keel_routing"]
    assert routing["tool"] == "calculator" and routing["called"] is True
    assert routing["score"] >= with_tools.tool_threshold
    assert reply.response_metadata["finish_reason"] == "tool_calls"


def test_calls_an_order_lookup_with_an_id_matching_the_pattern(
    with_tools: ExtractiveChatModel,
) -> None:
    reply = ask(with_tools, "where is my order ORD-1234?")
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [
        ("lookup_order", {"order_id": "ORD-1234"})
    ]


def test_calls_an_enum_tool_and_fills_optional_arguments_found(
    with_tools: ExtractiveChatModel,
) -> None:
    reply = ask(with_tools, "please switch me to the pro plan")
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("change_plan", {"plan": "pro"})]
    more = ask(with_tools, "switch me to the pro plan with 5 seats")
    assert [c["args"] for c in more.tool_calls] == [{"plan": "pro", "seats": 5}]


def test_a_matching_tool_without_its_arguments_is_not_called(
    with_tools: ExtractiveChatModel,
) -> None:
    reply = ask(with_tools, "where is my order?")
    assert reply.tool_calls == []
    assert reply.text == REFUSAL
    routing = reply.response_metadata["keel_routing"]
    assert routing["tool"] == "lookup_order"
    assert routing["called"] is False and routing["missing"] == ["order_id"]

    # the plan tool matches, no plan is named: the passages answer instead
    how = "To change your plan, open Settings and choose Billing."
    answer = ask(with_tools, "How do I change my plan?", how, OFFICE)
    assert answer.tool_calls == []
    assert answer.text == f"{how[:-1]} [1]."
    assert answer.response_metadata["keel_routing"]["missing"] == ["plan"]


def test_a_question_the_documents_answer_better_is_not_a_tool_call(
    with_tools: ExtractiveChatModel,
) -> None:
    # "pro" is a value of change_plan's enum, but this asks about the plan
    question = "How many seats does the Pro plan have?"
    assert ask(with_tools, question).tool_calls[0]["name"] == "change_plan"  # no documents
    answer = ask(with_tools, question, PLANS)
    assert answer.tool_calls == []
    assert answer.text.startswith("Pro: 20 seats and priority support")
    routing = answer.response_metadata["keel_routing"]
    assert routing["tool"] == "change_plan" and routing["called"] is False
    # weaker passages do not stop a lookup the question asks for
    lookup = ask(with_tools, "where is my order ORD-1234?", BILLING, PLANS)
    assert [c["name"] for c in lookup.tool_calls] == ["lookup_order"]


def test_an_unrelated_question_calls_no_tool(with_tools: ExtractiveChatModel) -> None:
    reply = ask(with_tools, "How long do I have to ask for a refund?", BILLING)
    assert reply.tool_calls == []
    assert reply.text.startswith("You can ask for a refund within 30 days")
    routing = reply.response_metadata["keel_routing"]
    assert routing["called"] is False and routing["score"] < with_tools.tool_threshold


def test_tool_choice_none_and_a_named_tool(model: ExtractiveChatModel) -> None:
    off = model.bind_tools(TOOLS, tool_choice="none")
    assert ask(off, "what is 12 * (3 + 4)?").tool_calls == []
    only_orders = model.bind_tools(TOOLS, tool_choice="lookup_order")
    assert ask(only_orders, "what is 12 * (3 + 4)?").tool_calls == []
    assert ask(only_orders, "where is my order ORD-1234?").tool_calls[0]["name"] == "lookup_order"


def test_answers_from_a_tool_result(with_tools: ExtractiveChatModel) -> None:
    call = AIMessage(
        content="",
        tool_calls=[{"name": "calculator", "args": {"expression": "6 * 7"}, "id": "call_1"}],
    )
    history = [HumanMessage("what is 6 * 7?"), call]
    reply = with_tools.invoke([*history, ToolMessage("42", tool_call_id="call_1")])
    assert reply.text == "calculator returned: 42"
    assert reply.tool_calls == []
    assert reply.response_metadata["finish_reason"] == "stop"

    long = with_tools.invoke([*history, ToolMessage("x" * 5000, tool_call_id="call_1")])
    assert len(long.text) < 1100 and long.text.endswith("…")

    failed = with_tools.invoke(
        [
            *history,
            ToolMessage(
                "Error: division by zero\nTraceback ...", tool_call_id="call_1", status="error"
            ),
        ]
    )
    assert failed.text == "calculator failed: Error: division by zero"
    assert failed.tool_calls == []


# -- LangChain behaviour ---------------------------------------------------------------------


def test_bind_tools_returns_a_new_model_and_accepts_every_tool_form(
    model: ExtractiveChatModel,
) -> None:
    class LookupInvoice(BaseModel):
        """Look up an invoice by its number."""

        invoice: str

    @tool
    def set_plan(plan: Literal["basic", "pro"]) -> str:
        """Set the plan."""
        return plan

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    bound = model.bind_tools([CALCULATOR, LookupInvoice, set_plan, add])
    assert isinstance(bound, ExtractiveChatModel) and bound is not model
    assert model.bound_tools == []
    names = [t["function"]["name"] for t in bound.bound_tools]
    assert names == ["calculator", "LookupInvoice", "set_plan", "add"]
    examples = CALCULATOR["function"]["x-keel-examples"]
    assert bound.bound_tools[0]["function"]["x-keel-examples"] == examples
    assert bound.embedder is model.embedder


def test_streaming_concatenates_to_the_invoke_text(model: ExtractiveChatModel) -> None:
    messages = turn("How long do I have to ask for a refund?", BILLING, OFFICE)
    expected = model.invoke(messages)
    chunks = list(model.stream(messages))
    assert len(chunks) > 3
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(str(c.content) for c in chunks) == expected.text
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].usage_metadata == expected.usage_metadata
    assert sum(1 for c in chunks if c.usage_metadata) == 1
    total = chunks[0]
    for c in chunks[1:]:
        total += c
    assert total.response_metadata["keel_citations"] == expected.response_metadata["keel_citations"]
    assert total.response_metadata["model_name"] == MODEL_ID


def test_stream_callbacks_get_every_token_once(model: ExtractiveChatModel) -> None:
    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
            self.tokens.append(token)

        def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
            pass

    handler = Tokens()
    messages = turn("How long do I have to ask for a refund?", BILLING)
    text = "".join(str(c.content) for c in model.stream(messages, config={"callbacks": [handler]}))
    assert "".join(handler.tokens) == text == model.invoke(messages).text


def test_streaming_a_tool_call_gives_one_chunk(with_tools: ExtractiveChatModel) -> None:
    messages = turn("where is my order ORD-1234?")
    chunks = list(with_tools.stream(messages))
    assert len(chunks) == 1
    assert chunks[0].tool_calls == with_tools.invoke(messages).tool_calls
    assert chunks[0].usage_metadata is not None


def test_async_invoke_and_stream(with_tools: ExtractiveChatModel) -> None:
    messages = turn("How long do I have to ask for a refund?", BILLING)

    async def run() -> tuple[AIMessage, str]:
        reply = await with_tools.ainvoke(messages)
        text = "".join([str(c.content) async for c in with_tools.astream(messages)])
        return reply, text

    reply, text = asyncio.run(run())
    assert reply.text == text == with_tools.invoke(messages).text


def test_is_deterministic(with_tools: ExtractiveChatModel) -> None:
    for messages in (
        turn("How do refunds work and when does the money come back?", BILLING, PLANS),
        turn("what is 12 * (3 + 4)?"),
    ):
        first, second = with_tools.invoke(messages), with_tools.invoke(messages)
        assert first.content == second.content
        assert first.tool_calls == second.tool_calls
        assert first.response_metadata == second.response_metadata
        assert first.usage_metadata == second.usage_metadata


def test_usage_counts_tokens_with_the_embedding_tokenizer(model: ExtractiveChatModel) -> None:
    messages = [SystemMessage("You answer from documents."), *turn("Refund window?", BILLING)]
    reply = model.invoke(messages)
    usage = reply.usage_metadata
    assert usage is not None
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    tokenizer = model.embedder.model.tokenizer
    assert usage["output_tokens"] == len(tokenizer.encode(reply.text, add_special_tokens=False))


def test_without_a_tokenizer_usage_counts_words() -> None:
    class NoModel:
        pass

    model = ExtractiveChatModel(embedder=NoModel())
    reply = model.invoke([HumanMessage("a question with six words")])
    assert reply.text == REFUSAL  # no passages: nothing is embedded at all
    assert reply.usage_metadata == {"input_tokens": 5, "output_tokens": 11, "total_tokens": 16}


def test_stop_sequences_cut_the_answer(model: ExtractiveChatModel) -> None:
    messages = turn("How long do I have to ask for a refund?", BILLING)
    reply = model.invoke(messages, stop=[" of purchase"])
    assert reply.text == "You can ask for a refund within 30 days"


def test_identifying_params_include_the_thresholds(model: ExtractiveChatModel) -> None:
    params = model._identifying_params
    assert params["model_name"] == MODEL_ID
    assert params["relevance_threshold"] == 0.30 and params["tool_threshold"] == 0.45
    assert model._llm_type == "keel-extractive"


# -- reading arguments (no model needed) -----------------------------------------------------


def schema(required: list[str], **properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


def test_numbers_are_read_in_order_with_thousands_and_decimals() -> None:
    params = schema(["count", "price"], count={"type": "integer"}, price={"type": "number"})
    assert extract_arguments(params, "order 1,000 units at 2.50 each") == (
        {"count": 1000, "price": 2.5},
        [],
    )
    assert extract_arguments(params, "order 3 units") == ({"count": 3}, ["price"])
    # a decimal is not an integer: not guessed
    assert extract_arguments(schema(["n"], n={"type": "integer"}), "take 2.5") == ({}, ["n"])
    # numbers inside codes are not numbers
    assert extract_arguments(schema(["n"], n={"type": "integer"}), "see ORD-12") == ({}, ["n"])


def test_strings_are_read_from_emails_quotes_and_codes() -> None:
    params = schema(
        ["email", "title", "code"],
        email={"type": "string"},
        title={"type": "string"},
        code={"type": "string"},
    )
    question = "send 'Welcome pack' to bob@example.com for ticket AB-12"
    assert extract_arguments(params, question) == (
        {"email": "bob@example.com", "title": "Welcome pack", "code": "AB-12"},
        [],
    )
    assert extract_arguments(schema(["city"], city={"type": "string"}), "weather in Paris?") == (
        {},
        ["city"],
    )
    assert extract_arguments(schema(["query"], query={"type": "string"}), " refunds? ") == (
        {"query": "refunds?"},
        [],
    )


def test_enums_must_be_named_once_and_unambiguously() -> None:
    params = schema(["plan"], plan={"enum": ["basic", "pro", "pro_plus"]})
    assert extract_arguments(params, "move me to PRO") == ({"plan": "pro"}, [])
    assert extract_arguments(params, "move me to pro plus") == ({"plan": "pro_plus"}, [])
    assert extract_arguments(params, "basic or pro?") == ({}, ["plan"])
    assert extract_arguments(params, "professional") == ({}, ["plan"])
    assert extract_arguments(schema(["v"], v={"const": "x"}), "anything") == ({"v": "x"}, [])


def test_patterns_expressions_and_unreadable_types() -> None:
    order = schema(["id"], id={"type": "string", "pattern": r"^ORD-\d+$"})
    assert extract_arguments(order, "status of ord-42 please") == ({"id": "ORD-42"}, [])
    assert extract_arguments(order, "status of ORDER-42") == ({}, ["id"])
    expr = schema(["expression"], expression={"type": "string"})
    assert extract_arguments(expr, "what is 12 times 7?") == ({"expression": "12 * 7"}, [])
    assert extract_arguments(expr, "compute 1,000 / (8 - 3)") == (
        {"expression": "1000 / (8 - 3)"},
        [],
    )
    assert extract_arguments(expr, "what is 15% of 2340") == ({"expression": "15/100*2340"}, [])
    assert extract_arguments(expr, "square root of 2") == ({"expression": "sqrt(2)"}, [])
    assert extract_arguments(expr, "what is 7?") == ({}, ["expression"])
    assert extract_arguments(expr, "meet on 2024-05-01") == ({}, ["expression"])
    flag = schema(["force"], force={"type": "boolean"})
    assert extract_arguments(flag, "yes force it") == ({}, ["force"])
    optional = schema([], flag={"type": "boolean"}, n={"type": "integer"})
    assert extract_arguments(optional, "no numbers here") == ({}, [])
