# Verbatim copies of github.com/GAIR-NLP/OctoThinker eval/few_shot_prompts/{few_shot_prompting,
# cot_gsm_8_shot,cot_minerva_math_4_shot,cot_amc_0_shot}.py at 2ee2b4965990ff162d7fc93b028ac375eb8cb8ce
# (Apache-2.0): the reference tests/test_protocols.py compares the few-shot prompts against.
