"""GRPO: reinforcement learning from verifiable rewards, on `model.fit` (Shao et al. 2024, DeepSeekMath).

Each optimizer step reads `training/batch_size / grpo/group_size` prompts of `data/source`
(JSONL of `{"prompt", ANSWER}`, `grpo/answer_key`) and samples `grpo/group_size`
completions of each with the KV-cache `Generator` (`grpo/temperature`, `grpo/top_p`),
with the weights the step starts from. A named reward (`theseus.evaluation.rewards`) scores
every completion; its advantage is its reward less its group's mean, over the group's
standard deviation (`(r - mean) / (std + 1e-4)`, the sample std, as TRL). The log-probs of
the sampled tokens under those weights (`old`) and under the reference (`ref`: the starting
weights; with LoRA the base, i.e. the adapters at their zero start, so no second model is
held) are computed outside the compiled step, and the step minimises, per completion token,

    -min(r A, clip(r, 1 - grpo/clip, 1 + grpo/clip) A) + grpo/beta * (exp(ref - logp) - (ref - logp) - 1)

with `r = exp(logp - old)` and the k3 estimator of KL(policy || reference) as the penalty,
averaged over each completion's tokens, then over the batch (`GRPOLoss`). One optimizer step
is taken per sampled batch, so `r` is 1 up to rounding and the clip binds only when a batch is
reused; the objective is written in full. Metrics rows gain `reward` (mean), `kl` (the k3
estimate between the sampling weights and the reference) and `completion_length` (tokens).

The batch of step k is a pure function of the weights after step k - 1 and of
(`training/seed`, k): prompts and sampling noise are seeded by both. So a checkpoint
(weights, optimizer, step) holds all a resumed run needs to sample exactly what the
uninterrupted run sampled, and the reference is rebuilt from the base that the checkpoint
names (and `FineTuning` checks). Each batch is sampled by a callback at the end of the step
before (`NextGroup`) and handed to `model.fit` through the data (`GroupBatches`), on every
backend. Validation rows are held-out prompts with their reference answers, scored by
negative log-likelihood (`val_loss`: the answers' loss per token).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import threading
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import keras
import numpy as np
from keras import ops
from keras.src.backend.common.stateless_scope import in_stateless_scope

from theseus.config import ConfigError, field
from theseus.data.sources import jsonl_records
from theseus.evaluation.rewards import cut, reward_function, score
from theseus.generation import Generator, compile_for_backend
from theseus.model.module import Module
from theseus.training.callbacks import StepCallback
from theseus.training.checkpoint import digest
from theseus.training.config import BaseTrainerConfig
from theseus.training.data import Batches
from theseus.training.finetune import HFFinetuner, NativeFinetuner
from theseus.training.huggingface import HFFinetuneConfig
from theseus.training.sources import ModelSource
from theseus.training.tuning import FineTuning

M = TypeVar("M", bound=Module)

CHANNELS = ("target", "mask", "advantage", "old_logp", "ref_logp", "reward", "sampled")
"""The float32 channels of a GRPO batch's targets (B, T, channels), in this order; `sampled` is
1 on sampled rows (the GRPO objective), 0 on validation rows (the answer's negative log-likelihood)."""
C = {name: index for index, name in enumerate(CHANNELS)}


@dataclasses.dataclass
class GRPOSection:
    """What a GRPO job samples, how it scores it, and how far it may move from the reference."""

    # one line a key, alike in every section: each key is declared once, where it belongs
    group_size: int = field("grpo/group_size", default=8, bounds=">= 2", help="completions sampled per prompt")
    beta: float = field("grpo/beta", default=0.04, bounds=">= 0", help="weight of the KL penalty to the reference")
    clip: float = field("grpo/clip", default=0.2, bounds=">= 0", help="the ratio is clipped to [1 - clip, 1 + clip]")
    temperature: float = field("grpo/temperature", default=1.0, bounds="> 0", help="sampling temperature")
    top_p: float = field("grpo/top_p", default=1.0, bounds="(0, 1]", help="nucleus sampling mass (1 = off)")
    max_new_tokens: int = field("grpo/max_new_tokens", default=16, bounds=">= 1", help="longest completion")
    reward: str = field(
        "grpo/reward",
        default="exact_match",
        help="exact_match (against grpo/answer_key), regex:PATTERN ({answer} = the row's answer) or MODULE:FUNCTION(completion, row)",
    )
    answer_key: str = field("grpo/answer_key", default="answer", help="the JSONL field holding each prompt's answer")
    until: list[str] = field(
        "grpo/until", default_factory=lambda: ["\n"], help="a completion's text is cut before the first of these"
    )


@dataclasses.dataclass
class NativeGRPOConfig(GRPOSection, BaseTrainerConfig):
    """A GRPO job of a native family (from a theseus run, `finetune/init_from`)."""


@dataclasses.dataclass
class HFGRPOConfig(GRPOSection, HFFinetuneConfig):
    """A GRPO job of a Hugging Face-format checkpoint."""


# ----------------------------------------------------------------------------- the objective


def token_logprobs(logits, targets):
    """log p of each target (B, T) under float32 `logits` (B, T, V)."""
    logits = ops.cast(logits, "float32")
    picked = ops.take_along_axis(logits, ops.expand_dims(targets, -1), axis=-1)[..., 0]
    return picked - ops.logsumexp(logits, axis=-1)


def k3(logp, ref):
    """The k3 estimator of KL(policy || reference) per token: exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    delta = ref - logp
    return ops.exp(delta) - delta - 1.0


def objective(logp, old, ref, advantage, beta: float, clip: float):
    """GRPO's per-token loss: the clipped policy-gradient term plus `beta` times the k3 KL."""
    ratio = ops.exp(logp - old)
    policy = -ops.minimum(ratio * advantage, ops.clip(ratio, 1.0 - clip, 1.0 + clip) * advantage)
    return policy + beta * k3(logp, ref)


def per_sequence(values, mask):
    """The mean of `values` (B, T) over each row's masked tokens (B,)."""
    return ops.sum(values * mask, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)


@keras.saving.register_keras_serializable(package="theseus")
class GRPOLoss(keras.losses.Loss):
    """`objective` averaged over each completion's tokens (rows of `y_true` channel `sampled`),
    or the negative log-likelihood of the masked tokens (validation rows); Keras then averages
    the rows. `y_true` is (B, T, len(CHANNELS)) float32, `y_pred` the logits (B, T, V)."""

    def __init__(self, beta: float = 0.04, clip: float = 0.2, name: str = "grpo_loss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.beta, self.clip = beta, clip

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        channel = {name: y_true[..., i] for name, i in C.items()}
        logp = token_logprobs(y_pred, ops.cast(channel["target"], "int32"))
        grpo = objective(logp, channel["old_logp"], channel["ref_logp"], channel["advantage"], self.beta, self.clip)
        per_token = ops.where(channel["sampled"] > 0, grpo, -logp)
        return per_sequence(per_token, channel["mask"])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta": self.beta, "clip": self.clip}


def reward(y_true, y_pred):
    """Each sampled completion's reward."""
    return ops.cast(y_true, "float32")[:, 0, C["reward"]]


def kl(y_true, y_pred):
    """Each completion's mean k3 KL between the weights that sampled it and the reference."""
    y_true = ops.cast(y_true, "float32")
    return per_sequence(k3(y_true[..., C["old_logp"]], y_true[..., C["ref_logp"]]), y_true[..., C["mask"]])


def completion_length(y_true, y_pred):
    """Each completion's length in tokens."""
    return ops.sum(ops.cast(y_true, "float32")[..., C["mask"]], axis=-1)


def group_advantages(rewards: np.ndarray, group_size: int) -> np.ndarray:
    """Each reward less its group's mean, over the group's sample standard deviation + 1e-4."""
    groups = np.asarray(rewards, "float64").reshape(-1, group_size)
    centred = groups - groups.mean(axis=1, keepdims=True)
    return (centred / (groups.std(axis=1, ddof=1, keepdims=True) + 1e-4)).reshape(-1)


# ----------------------------------------------------------------------------- the data


def read_prompts(path: str, answer_key: str) -> list[dict[str, Any]]:
    """The rows of the prompts file, each with a text `prompt` and `answer_key` (one ConfigError line)."""
    if not Path(path).expanduser().is_file():
        raise ConfigError(f"data/source: no prompts file {path} (JSONL of {{prompt, {answer_key}}})")
    rows = []
    for number, row in jsonl_records(path, "data/source"):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or answer_key not in row:
            raise ConfigError(f"data/source {path}:{number}: each line needs a text 'prompt' and '{answer_key}'")
        rows.append(row)
    if len(rows) < 2:
        raise ConfigError(f"data/source {path}: GRPO needs at least 2 prompts (one is held out), found {len(rows)}")
    return rows


def layout(prompts: list[list[int]], completions: list[list[int]], length: int, pad: int):
    """Inputs (B, length), next-token targets and the mask of the completions' targets."""
    inputs = np.full((len(prompts), length), pad, "int32")
    targets = np.zeros((len(prompts), length), "int32")
    mask = np.zeros((len(prompts), length), "float32")
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        sequence = [*prompt, *completion][: length + 1]
        end = len(sequence) - 1
        inputs[row, :end], targets[row, :end] = sequence[:-1], sequence[1:]
        mask[row, len(prompt) - 1 : end] = 1.0
    return inputs, targets, mask


def pack(targets, mask, **channels) -> np.ndarray:
    """The (B, T, len(CHANNELS)) targets of a batch; a per-row channel (B,) is spread over T."""
    y = np.zeros((*targets.shape, len(CHANNELS)), "float32")
    y[..., C["target"]], y[..., C["mask"]] = targets, mask
    for name, value in channels.items():
        value = np.asarray(value, "float32")
        y[..., C[name]] = value[:, None] if value.ndim == 1 else value
    return y


@contextlib.contextmanager
def weights_set_to(variables: list, values: list):
    """Inside, `variables` hold `values`; afterwards their own values again, exactly."""
    own = [ops.copy(v.value) for v in variables]
    for variable, value in zip(variables, values):
        variable.assign(value)
    try:
        yield
    finally:
        for variable, value in zip(variables, own):
            variable.assign(value)


class Prompts:
    """The prompts file, encoded and split: training rows, and held-out rows for validation."""

    def __init__(self, config: Any, tokenizer: Any) -> None:
        rows = read_prompts(config.source, config.answer_key)
        held = max(1, round(config.validation_fraction * len(rows)))
        order = np.random.default_rng(0).permutation(len(rows))
        self.train = [rows[i] for i in sorted(order[held:])]
        self.heldout = [rows[i] for i in sorted(order[:held])]
        self.eos = tokenizer.eos_id
        self.ids = {id(row): [int(t) for t in tokenizer.encode(row["prompt"])] or [self.eos] for row in rows}
        longest = max(len(ids) for ids in self.ids.values())
        if longest + config.max_new_tokens > config.block_size:
            raise ConfigError(
                f"grpo/max_new_tokens={config.max_new_tokens}: the longest prompt ({longest} tokens) and its "
                f"completion exceed architecture/block_size={config.block_size}"
            )
        source = Path(config.source).expanduser()
        key = f"{digest([source])[:16] if source.is_file() else config.source}|{config.validation_fraction}"
        self.fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]

    def of_step(self, seed: int, step: int, count: int) -> list[dict[str, Any]]:
        """The `count` training rows of step `step`: a pure function of (seed, step)."""
        chosen = np.random.default_rng([seed, step]).choice(len(self.train), count, replace=count > len(self.train))
        return [self.train[i] for i in chosen]

    def validation(self, tokenizer: Any, config: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        """Batches of held-out prompts with their answers (at most `max_new_tokens`), for `val_loss`."""
        size = config.batch_size
        count = min(config.validation_batches, -(-len(self.heldout) // size))
        rows = [self.heldout[i % len(self.heldout)] for i in range(count * size)]
        answers = [[int(t) for t in tokenizer.encode(str(r[config.answer_key]))][: config.max_new_tokens] for r in rows]
        inputs, targets, mask = layout([self.ids[id(r)] for r in rows], answers, config.block_size, self.eos)
        return [
            (inputs[i : i + size], pack(targets[i : i + size], mask[i : i + size]))
            for i in range(0, count * size, size)
        ]


class Arrays(keras.utils.PyDataset):
    """Fixed `(x, y)` batches."""

    def __init__(self, batches: list) -> None:
        super().__init__()
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        return self.batches[index]


class GroupSampler:
    """Each step's batch: its prompts' groups of completions, their rewards and advantages,
    and the old and reference log-probs, made with the weights the step starts from."""

    def __init__(self, model: keras.Model, tokenizer: Any, config: Any, prompts: Prompts, reference, start: int):
        self.model, self.tokenizer, self.config, self.prompts = model, tokenizer, config, prompts
        self.reference, self.start = reference, start  # (variables, their starting values)
        self.reward = reward_function(config.reward, config.answer_key)
        self.generator = Generator(model, pad_id=tokenizer.eos_id)
        self.logprobs = compile_for_backend(model, lambda x, t: token_logprobs(model(x), t))
        self.slots: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.ready = threading.Condition()
        self.started = False  # set when `fit` begins: earlier requests only look at shapes

    def sample(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        cfg, eos = self.config, self.tokenizer.eos_id
        chosen = self.prompts.of_step(cfg.seed, step, cfg.batch_size // cfg.group_size)
        rows = [row for row in chosen for _ in range(cfg.group_size)]  # each prompt's group, together
        prompts = [self.prompts.ids[id(row)] for row in rows]
        seed = (cfg.seed * 1_000_003 + step) % (2**31 - 1)
        settings = dict(temperature=cfg.temperature, top_p=cfg.top_p, stop_token_ids=[eos], seed=seed)
        completions = self.generator(prompts, cfg.max_new_tokens, **settings).tokens
        texts = [cut(self.tokenizer.decode([t for t in c if t != eos]), cfg.until) for c in completions]
        rewards = np.asarray(score(self.reward, texts, rows), "float32")
        inputs, targets, mask = layout(prompts, completions, cfg.block_size, eos)
        old = ops.convert_to_numpy(self.logprobs(inputs, targets))
        with weights_set_to(*self.reference):
            ref = ops.convert_to_numpy(self.logprobs(inputs, targets))
        advantage = group_advantages(rewards, cfg.group_size)
        y = pack(
            targets, mask, advantage=advantage, old_logp=old, ref_logp=ref, reward=rewards, sampled=np.ones(len(rows))
        )
        return inputs, y

    def put(self, step: int) -> None:
        """Sample step `step`'s batch now (the weights are those after step `step - 1`)."""
        batch = self.sample(step)
        with self.ready:
            self.slots[step] = batch
            self.ready.notify_all()

    def get(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Step `step`'s batch; Keras's look at shapes before training gets zeros for one not
        sampled yet, and a data thread (TensorFlow's) waits for `NextGroup` to sample it."""
        with self.ready:
            if step not in self.slots and not self.started:
                size, length = self.config.batch_size, self.config.block_size
                return np.zeros((size, length), "int32"), np.zeros((size, length, len(CHANNELS)), "float32")
            if step not in self.slots and threading.current_thread() is threading.main_thread():
                raise RuntimeError(f"GRPO: the batch of step {step} was asked for before step {step - 1} ended")
            self.ready.wait_for(lambda: step in self.slots)
            for old in [s for s in self.slots if s < step]:
                del self.slots[old]
            return self.slots[step]


class GroupBatches(keras.utils.PyDataset):
    """The training batches of steps `start ... total - 1`, from a `GroupSampler`."""

    def __init__(self, sampler: GroupSampler, start: int, total: int) -> None:
        super().__init__()
        self.sampler, self.start, self.total = sampler, start, total

    def __len__(self) -> int:
        return self.total - self.start

    def __getitem__(self, index: int):
        return self.sampler.get(self.start + index)


class NextGroup(StepCallback):
    """At the end of each step but the last, sample the next step's batch with the new weights."""

    def __init__(self, sampler: GroupSampler, start_step: int, total_steps: int, micro_steps: int = 1) -> None:
        super().__init__(start_step, total_steps, micro_steps)
        self.sampler = sampler

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.sampler.started = True

    def on_step_end(self, step: int, logs: dict) -> None:
        if step < self.total_steps:
            assert self.model is self.sampler.model  # on JAX, reading it syncs the training state into the variables
            self.sampler.put(step)


# ----------------------------------------------------------------------------- the job


class GRPOTuning(FineTuning):
    """`FineTuning` (LoRA, freezing, `finetune/init_from`, partial checkpoints, the checked base)
    whose data are sampled groups; it keeps the starting values of the trainable weights as
    the reference (with LoRA: the adapters, B at zero, which is the base)."""

    def __init__(self, values: dict[str, Any], config: Any, source: ModelSource, job: str) -> None:
        super().__init__(values, config, source, job)
        if config.batch_size % config.group_size:
            raise ConfigError(
                f"training/batch_size={config.batch_size} must be a multiple of grpo/group_size={config.group_size}"
            )
        reward_function(config.reward, config.answer_key)  # an unknown reward fails now
        self.prompts = Prompts(config, source.tokenizer())
        self.model: keras.Model | None = None
        self.reference: tuple[list, list] = ([], [])
        self.sampler: GroupSampler | None = None

    def adapt(self, model: keras.Model) -> None:
        super().adapt(model)
        if not in_stateless_scope():  # the model that trains, not an abstract build
            self.model = model
            self.reference = (model.trainable_weights, [ops.copy(v.value) for v in model.trainable_weights])

    def batches(
        self, config: BaseTrainerConfig, tokenizer: Any, total_steps: int, start_step: int, vocab_size: int | None
    ) -> Batches:
        self.sampler = GroupSampler(self.model, tokenizer, config, self.prompts, self.reference, start_step)
        if start_step < total_steps:  # the first batch, with the weights the run starts (or resumes) from
            self.sampler.put(start_step)
        validation = Arrays(self.prompts.validation(tokenizer, config))
        return Batches(GroupBatches(self.sampler, start_step, total_steps), validation, self.prompts.fingerprint)


class GRPOFromRun(GRPOTuning):
    """`GRPOTuning` of a native family: from a theseus run (`finetune/init_from`)."""

    NEEDS_RUN = True


class GRPOSteps:
    """What a GRPO trainer adds to a fine-tuning one: the objective and its metrics, and the
    callback that samples each next batch."""

    config: Any
    tuning: GRPOTuning
    total_steps: int
    micro_steps: int

    def compile(self, model: keras.Model, schedule) -> None:
        super().compile(model, schedule)  # the optimizer, with accumulation and norm tracking
        model.compile(
            optimizer=model.optimizer,
            loss=GRPOLoss(self.config.beta, self.config.clip),
            metrics=[reward, kl, completion_length],
            jit_compile=self.config.jit_compile,
        )

    def extra_callbacks(self, start_step: int) -> list[keras.callbacks.Callback]:
        return [
            *super().extra_callbacks(start_step),
            NextGroup(self.tuning.sampler, start_step, self.total_steps, self.micro_steps),
        ]

    def distribution(self) -> keras.distribution.Distribution | None:
        """The run's distribution; on one accelerator under JAX, a one-device one: without it Keras
        reads each batch one step ahead, before the weights that must sample it exist."""
        found = super().distribution()
        if found is None and keras.backend.backend() == "jax":
            import jax

            if jax.default_backend() != "cpu":
                found = keras.distribution.DataParallel(devices=jax.devices()[:1], auto_shard_dataset=False)
        return found


class NativeGRPOTrainer(GRPOSteps, NativeFinetuner[M]):
    """GRPO of a native family from a theseus run (`finetune/init_from`); writes `RUN/hf`."""

    CONFIG: ClassVar[type] = NativeGRPOConfig
    TUNING: ClassVar[type] = GRPOFromRun


class HFGRPOTrainer(GRPOSteps, HFFinetuner[M]):
    """GRPO of a Hugging Face-format checkpoint; writes `RUN/hf`."""

    CONFIG: ClassVar[type] = HFGRPOConfig
    TUNING: ClassVar[type] = GRPOTuning
