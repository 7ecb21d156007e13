"""The root API is tiny on purpose; adding to it is a decision, so it is pinned here."""

import keel


def test_root_api_is_pinned() -> None:
    assert sorted(keel.__all__) == ["App", "__version__"]
    assert keel.App.__name__ == "App"


AREAS = {
    "keel.tuning": [
        "PreferencePair",
        "SftExample",
        "preference_pairs",
        "rated_turns",
        "sft_examples",
    ],
    "keel.rag": ["Chunk", "Document", "Embedder", "Hit", "IngestReport", "Retriever"],
    "keel.tools": [
        "RunBudget",
        "Status",
        "Tool",
        "ToolArgumentError",
        "ToolCall",
        "ToolCallRecord",
        "ToolOutcome",
        "ToolPolicy",
        "Toolset",
        "calculator",
        "get_tool",
        "make_http_get",
        "make_search_knowledge",
        "tool",
    ],
    "keel.agents": [
        "REFUSAL_TEXT",
        "Answer",
        "ApprovalRequired",
        "CitationFound",
        "Done",
        "Guardrail",
        "ModelAttempt",
        "ModelChain",
        "ModelParams",
        "StreamEvent",
        "Token",
        "ToolCallDelta",
        "ToolCallDone",
        "TurnRequest",
        "TurnRunner",
    ],
    "keel.guardrails": [
        "VALIDATORS",
        "GroundingValidator",
        "GuardCheck",
        "GuardEvent",
        "GuardRunner",
        "InjectionValidator",
        "JsonSchemaValidator",
        "LengthValidator",
        "OffTopicValidator",
        "PiiValidator",
        "PromptLeakValidator",
        "SecretsValidator",
        "TopicDenylistValidator",
        "check",
        "redact_text",
        "structured_guard",
    ],
    "keel.api": ["create_app"],
    "keel.ops": [
        "CreatedRelease",
        "DriftReport",
        "Metrics",
        "Release",
        "ReleaseStore",
        "SemanticCache",
        "create_release",
        "detect_drift",
        "diff_content",
        "is_refusal",
    ],
    "keel.evals": [
        "Case",
        "CaseResult",
        "Dataset",
        "EvalRunStore",
        "ModelComparison",
        "PairwiseJudge",
        "RubricJudge",
        "RunResult",
        "Suite",
        "SuiteGate",
        "arun_suite",
        "cases_from_feedback",
        "cases_from_traces",
        "compare_models",
        "default_reference",
        "evaluate",
        "judge_model",
        "load_dataset",
        "load_suite",
        "ragas_llm",
        "run_suite",
    ],
}


def test_each_area_exports_a_small_pinned_api() -> None:
    """Each area's public names are pinned, and each resolves to the object its module
    defines (loaded lazily: importing an area imports none of them)."""
    import importlib

    for area, names in AREAS.items():
        module = importlib.import_module(area)
        assert module.__all__ == names, area
        for name in names:
            value = getattr(module, name)
            assert value is not None, (area, name)
        assert set(names) <= set(dir(module)), area


def test_importing_the_areas_loads_no_heavy_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys, keel.rag, keel.agents, keel.guardrails, keel.ops, keel.evals, keel.api\n"
        "import keel.tuning\n"
        "heavy = [m for m in ('torch', 'chromadb', 'langgraph', 'guardrails', 'ragas', "
        "'fastapi', 'sentence_transformers') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
