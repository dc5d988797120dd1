"""Prompt templates (the papers' own, README "The curriculum"), verbatim, in one place.

Each template has one ``{Problem}`` placeholder and is applied as ``template.format(Problem=p)``
(literal braces in a template are doubled). ``build_prompt`` wraps it in the model's chat
template when the model has one (one user message, no system prompt, generation prompt on),
as the paper does; for a base model without a chat template the text is used as it is.
"""

from __future__ import annotations

# (a) The final v3 parallel prompt: SFT, every RL run and evaluation. No trailing newline;
# the dash in "thinking—just" is an em-dash (U+2014).
PARALLEL_V3 = (
    "Solve the following problem step by step.\n"
    "During the reasoning process, whenever you encounter a step that may benefit from multiple "
    "perspectives or independent reasoning, insert a parallel block at that point.\n"
    "\n"
    "Within each parallel block:\n"
    "Begin the block with <Parallel>.\n"
    "Include at least two distinct and independent reasoning paths.\n"
    "Each path must be enclosed within <Path> and </Path> tags.\n"
    "Do not include any ordering information or cross-references between paths, as they are "
    "generated simultaneously and independently.\n"
    "Close the block with </Parallel>.\n"
    "Immediately after each </Parallel>, write a concise summary of insights or conclusions drawn "
    "from all paths, enclosed in <Summary> and </Summary> tags.\n"
    "\n"
    "Repeat this process adaptively as needed throughout the reasoning.\n"
    "Do not explicitly mention that you are triggering parallel thinking\u2014just insert the "
    "parallel block naturally within the reasoning chain.\n"
    "\n"
    "End your response with a line starting with Final Answer: followed by the final result.\n"
    "\n"
    "Problem: {Problem}"
)

# (b) The v2 prompt of the pilot SFT data: three differences from v3.
PARALLEL_V2 = PARALLEL_V3.replace(
    "insert a parallel block at that point.\n\nWithin each parallel block:\nBegin the block with <Parallel>.\n",
    "insert a <Parallel> block at that point.\n\nWithin each <Parallel> block:\n\n",
).replace("just insert the parallel block naturally", "just insert the <Parallel> block naturally")

# (c) The sequential GRPO baseline.
BASELINE = '{Problem} Let\'s think step by step and output the final answer after "Final Answer: ".'

# (d) The bare problem.
NO_PROMPT = "{Problem}"

# OctoThinker's RL template (Open-Reasoner-Zero style, "complex"); answers in \boxed{}.
ORZ = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. User: You must put your answer inside \\boxed{{}} and Your final answer will be extracted "
    "automatically by the \\boxed{{}} tag.\n{Problem}\nAssistant:"
)

TEMPLATES: dict[str, str] = {
    "parallel_v3": PARALLEL_V3,
    "parallel_v2": PARALLEL_V2,
    "baseline": BASELINE,
    "no_prompt": NO_PROMPT,
    "orz": ORZ,
}

# Templates whose text is the whole model input: never wrapped in a chat template.
RAW_TEMPLATES = {"orz"}


def get_template(name: str) -> str:
    if name not in TEMPLATES:
        raise KeyError(f"unknown prompt template {name!r}; known: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name]


def format_problem(problem: str, template: str = "parallel_v3") -> str:
    """The user message: the named template applied to ``problem``."""
    return get_template(template).format(Problem=problem)


def bos_prefix(tokenizer) -> str:
    """The text that puts the tokenizer's BOS before a raw-text prompt, as vLLM does: it encodes a
    text prompt with special tokens, so the tokenizer's post-processor decides (Llama's adds
    ``<|begin_of_text|>``, Qwen's and SmolLM2's add nothing). Empty when it adds none. Chat
    templates write their own BOS, so this is for prompts that bypass them."""
    if tokenizer is None or tokenizer.bos_token is None:
        return ""
    with_special = tokenizer.encode("a", add_special_tokens=True)
    adds = with_special[:1] == [tokenizer.bos_token_id] != tokenizer.encode("a", add_special_tokens=False)[:1]
    return tokenizer.bos_token if adds else ""


def build_prompt(
    problem: str,
    tokenizer=None,
    template: str = "parallel_v3",
    use_chat_template: bool | None = None,
    raw_bos: bool = False,
) -> str:
    """The full prompt text a model is given for ``problem``.

    ``use_chat_template=None`` means: use it when the tokenizer has one and the template is not
    a raw one (the ORZ template already contains its own "User:/Assistant:" turns).
    ``raw_bos``: a prompt that is not chat-templated starts with :func:`bos_prefix` (evaluation,
    to score as vLLM-based evaluations did).
    """
    text = format_problem(problem, template)
    if use_chat_template is None:
        use_chat_template = (
            tokenizer is not None and bool(getattr(tokenizer, "chat_template", None)) and template not in RAW_TEMPLATES
        )
    if not use_chat_template:
        return bos_prefix(tokenizer) + text if raw_bos else text
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
