"""Evaluation: scoring and sampling models (`LanguageModel`), the evaluations run on them
(perplexity, multiple choice, exact match, lm-evaluation-harness tasks) and the evaluation
job they make up (`evaluator.BaseEvaluator`; `huggingface.HFEvaluator` for a Hugging Face
folder). Opening a training run as a model needs the job registry: `theseus.experiments.sources`."""
