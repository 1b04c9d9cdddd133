"""Evaluation: scoring and sampling models (`LanguageModel`), the evaluations run on them
(perplexity, multiple choice, exact match, lm-evaluation-harness tasks) and the
`FAMILY/eval/evaluate` jobs (`evaluator.BaseEvaluator`, `huggingface.HFEvaluator`)."""
