"""Training and evaluation loops shared by every stage of `rt3c prune`.

Masks are `{parameter name: bool tensor}`. A model is run "at a level" by multiplying its weights with that
level's masks inside `torch.func.functional_call`, so all levels share one set of weights and the gradient
of each level's loss reaches only the weights that level keeps.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from rt3c.core.errors import SettingError
from rt3c.core.progress import console
from rt3c.stages.datasets import Split
from rt3c.stages.models.base import LoadedModel

Masks = dict[str, torch.Tensor]
PRECISIONS = ("float32", "bfloat16")
AUTO_PRECISION = "auto"
"""bfloat16 on a CPU with bfloat16 instructions, float32 elsewhere (`resolve_precision`)."""
PRECISION_CHOICES = (AUTO_PRECISION, *PRECISIONS)
"""What a command's precision setting accepts; a training stage runs one of `PRECISIONS`."""
BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""/proc/cpuinfo flags of bfloat16 arithmetic: x86 AVX-512 BF16 and AMX-BF16 (`flags`), Arm BF16 (`Features`)."""


@dataclass
class TrainSettings:
    steps: int
    learning_rate: float
    batch_size: int = 32
    seed: int = 0
    warmup: float = 0.0  # fraction of the steps over which the learning rate ramps up from 0
    length_buckets: bool = False  # batches of similar lengths (`Split.length_bucketed_batches`)
    distill: float = 0.0  # weight of the distillation loss against the teacher (the rest: cross entropy)
    temperature: float = 2.0  # of the distillation loss's softmaxes
    hidden_distill: float = 0.0
    """Weight of the hidden-state loss against the teacher (`hidden_state_loss`), added to each level's loss;
    0: the logits alone are distilled. Needs a teacher and a model that returns its hidden states."""
    precision: str = "float32"
    """Of the training forwards and backwards, one of `PRECISIONS`: "bfloat16" runs them under CPU autocast
    (matmuls in bfloat16, weights, optimizer state, softmaxes and losses in float32); evaluation stays
    float32. Measured on minilm-l6, batch 32: a training step 2.4x faster at 2 threads and 2.7x at 1 on a CPU
    with AVX-512 BF16 (docs/SEARCH.md); on a CPU without it, bfloat16 is emulated and slower."""

    def __post_init__(self) -> None:
        # Any other name would silently train in float32.
        check_precision(self.precision)
        if self.hidden_distill < 0.0:
            raise SettingError("hidden_distill", "must be >= 0", self.hidden_distill)


def check_precision(precision: str, choices: tuple[str, ...] = PRECISIONS) -> None:
    if precision not in choices:
        raise SettingError("precision", f"choose one of {', '.join(choices)}", repr(precision))


def native_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU described by `cpuinfo` (default: this machine's /proc/cpuinfo) has bfloat16
    arithmetic. Without it torch emulates bfloat16: measured on an AMD EPYC with AVX2 only, the search's
    backbone stage had not finished in 13 minutes in bfloat16 where float32 took 3.3 (docs/SEARCH.md)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as file:
                cpuinfo = file.read()
        except OSError:
            return False
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return not flags.isdisjoint(BFLOAT16_CPU_FLAGS)


def resolve_precision(precision: str) -> str:
    """The precision a training stage runs in: one of `PRECISIONS`, or for `AUTO_PRECISION` bfloat16 where
    the CPU has bfloat16 instructions and float32 elsewhere, said on the console (the commands record the
    resolved precision with their settings, so a run names the arithmetic it ran)."""
    check_precision(precision, PRECISION_CHOICES)
    if precision != AUTO_PRECISION:
        return precision
    native = native_bfloat16()
    resolved = "bfloat16" if native else "float32"
    console.print(f"training in {resolved}: this CPU has {'' if native else 'no '}bfloat16 instructions")
    return resolved


def check_hidden_distill(model: LoadedModel, weight: float) -> None:
    """A hidden-state distillation weight the model can train with, checked before any work starts."""
    if weight < 0.0:
        raise SettingError("hidden_distill", "must be >= 0", weight)
    if weight > 0.0 and not has_hidden_states(model.module):
        raise SettingError(
            "hidden_distill", f"model {model.name} returns no hidden states to distill", weight
        )


def check_learning_rates(config: object, settings: Iterable[str]) -> None:
    """Each of `config`'s `settings` a positive finite learning rate (zero, a negative or NaN rate would
    train silently: nothing, away from the loss, or into NaN weights)."""
    for setting in settings:
        rate = getattr(config, setting)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 < rate < math.inf:
            raise SettingError(setting, "must be a positive finite number", rate)


def learning_rate_factor(step: int, settings: TrainSettings) -> float:
    """Linear warmup over `warmup · steps`, then linear decay to 0 at the last step."""
    warmup_steps = round(settings.warmup * settings.steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 1.0 - (step - warmup_steps) / max(settings.steps - warmup_steps, 1)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def _call(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], masks: Masks | None, **options: bool
) -> object:
    if masks:
        weights = dict(module.named_parameters())
        return torch.func.functional_call(
            module, {name: weights[name] * mask for name, mask in masks.items()}, inputs, options
        )
    return module(*inputs, **options)


def run(module: nn.Module, inputs: tuple[torch.Tensor, ...], masks: Masks | None = None) -> torch.Tensor:
    """Logits of `module` on `inputs`, with `masks` applied to its weights (None: as it is)."""
    output = _call(module, inputs, masks)
    return output.logits if hasattr(output, "logits") else output


def has_hidden_states(module: nn.Module) -> bool:
    """Whether `module` returns its layers' hidden states when asked: Hugging Face models do (their config
    has the switch; their forwards may take it only through `**kwargs`)."""
    return hasattr(getattr(module, "config", None), "output_hidden_states")


def run_with_hidden_states(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], masks: Masks | None = None
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Logits and the output of every encoder layer (the embeddings' output left out: pruning never
    changes it) of a module for which `has_hidden_states` holds."""
    output = _call(module, inputs, masks, output_hidden_states=True)
    return output.logits, output.hidden_states[1:]


def loss_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross entropy for classes `[N, classes]` or next tokens `[N, seq, vocab]`."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(teacher ‖ student) of the temperature-softened distributions, averaged over examples (or
    tokens); the T² keeps its gradient on the scale of the cross entropy's (Hinton et al. 2015)."""
    classes = logits.shape[-1]
    return temperature**2 * F.kl_div(
        F.log_softmax(logits.reshape(-1, classes) / temperature, dim=-1),
        F.log_softmax(teacher_logits.reshape(-1, classes) / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )


def hidden_state_loss(
    hidden: tuple[torch.Tensor, ...],
    teacher_hidden: tuple[torch.Tensor, ...],
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Mean over layers of the squared error between student and teacher hidden states relative to the
    teacher's mean square, over real tokens (`attention_mask`; None: all), so the loss does not scale with
    the width or the activations' magnitude: 0 when the student matches the teacher, 1 when it outputs 0."""
    weight = torch.ones(hidden[0].shape[:2]) if attention_mask is None else attention_mask.float()
    losses = [
        (weight * (h.float() - t).pow(2).mean(dim=-1)).sum()
        / (weight * t.pow(2).mean(dim=-1)).sum().clamp_min(1e-12)
        for h, t in zip(hidden, teacher_hidden, strict=True)
    ]
    return torch.stack(losses).mean()


def apply_masks(module: nn.Module, masks: Masks) -> None:
    weights = dict(module.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            weights[name].mul_(mask)


class Teacher:
    """The frozen dense model whose logits every distilling stage learns from, with its logits of each
    training row kept once computed. A classifier's logits depend only on the row (eval mode: no dropout;
    padding is masked out), and the stages revisit rows: the joint stage's 1200 batches of 32 pass over
    Rotten Tomatoes' 8,530 training rows 4.5 times, and every search candidate recovers on the same 16
    batches, so most batches need no teacher forward at all (one in ten of a joint step's forwards, a
    quarter of a one-level stage's). Language models' logits (`[seq, vocab]` per row) are not kept."""

    def __init__(self, module: nn.Module) -> None:
        self.module = copy.deepcopy(module).requires_grad_(False).eval()
        self._kept: dict[int, tuple[Split, torch.Tensor, torch.Tensor]] = {}

    def logits(self, split: Split, index: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The teacher's logits of rows `index` of `split` (`inputs` = `split.batch(index)[0]`)."""
        if split.targets.dim() != 1:
            return self._run(inputs)
        # Keyed by identity; the entry holds the split, so its id is not reused while the entry lives.
        entry = self._kept.get(id(split))
        missing = torch.ones(len(index), dtype=torch.bool) if entry is None else ~entry[2][index]
        if missing.any():
            computed = self._run(tuple(tensor[missing] for tensor in inputs))
            if entry is None:
                entry = (
                    split,
                    torch.empty(len(split), computed.shape[-1]),
                    torch.zeros(len(split), dtype=torch.bool),
                )
                self._kept[id(split)] = entry
            entry[1][index[missing]] = computed
            entry[2][index[missing]] = True
        return entry[1][index]

    @torch.no_grad()
    def logits_and_hidden_states(
        self, inputs: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The teacher's logits and hidden states of `inputs`, computed afresh (hidden states are not kept:
        a row's are `[layers, seq, hidden]`)."""
        return run_with_hidden_states(self.module, inputs)

    @torch.no_grad()
    def _run(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return run(self.module, inputs)


def _level_loss(
    logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor | None, settings: TrainSettings
) -> torch.Tensor:
    loss = loss_of(logits, targets)
    if teacher_logits is None or settings.distill == 0.0:
        return loss
    soft = distillation_loss(logits, teacher_logits, settings.temperature)
    return (1.0 - settings.distill) * loss + settings.distill * soft


def _step_loss(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    targets: torch.Tensor,
    levels: list[Masks],
    weights: list[float],
    teacher_logits: torch.Tensor | None,
    teacher_hidden: tuple[torch.Tensor, ...] | None,
    settings: TrainSettings,
) -> torch.Tensor:
    """Σ_l w_l · level l's loss, plus its hidden-state loss when the teacher's hidden states are given."""
    attention_mask = inputs[1] if len(inputs) > 1 else None
    loss = torch.zeros(())
    for w, masks in zip(weights, levels, strict=True):
        if teacher_hidden is None:
            level_loss = _level_loss(run(module, inputs, masks).float(), targets, teacher_logits, settings)
        else:
            logits, hidden = run_with_hidden_states(module, inputs, masks)
            level_loss = _level_loss(logits.float(), targets, teacher_logits, settings)
            level_loss = level_loss + settings.hidden_distill * hidden_state_loss(
                hidden, teacher_hidden, attention_mask
            )
        loss = loss + w * level_loss
    return loss


def _batches(split: Split, settings: TrainSettings) -> Iterator[torch.Tensor]:
    """Row indices of `settings.steps` batches: shuffled passes over the split, reshuffled each pass."""
    generator = torch.Generator().manual_seed(settings.seed)
    produced = 0
    while True:
        if settings.length_buckets:
            batches = split.length_bucketed_batches(settings.batch_size, generator)
        else:
            order = torch.randperm(len(split), generator=generator)
            batches = list(order[: len(order) - len(order) % settings.batch_size].split(settings.batch_size))
            batches = batches or [order]
        for index in batches:
            if produced == settings.steps:
                return
            produced += 1
            yield index


def train(
    model: LoadedModel,
    split: Split,
    settings: TrainSettings,
    description: str,
    *,
    level_masks: list[Masks] | None = None,
    level_weights: list[float] | None = None,
    keep: Masks | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
    every_step: Callable[[int], None] | None = None,
    teacher: Teacher | None = None,
) -> None:
    """AdamW with linear warmup and decay. Loss = Σ_l w_l·loss(level l) (+ penalty), where a level's loss
    is cross entropy, or with a `teacher` (1 - distill)·cross entropy + distill·distillation loss against
    the teacher's logits, plus hidden_distill·`hidden_state_loss` against its hidden states when
    `settings.hidden_distill` > 0. `keep` masks gradients and is re-applied to the weights after every step, so
    pruned weights stay exactly zero; it is read every step, so `every_step` may change it in place."""
    module = model.module
    if settings.hidden_distill > 0.0 and (teacher is None or not has_hidden_states(module)):
        reason = "without a teacher" if teacher is None else f"model {model.name} returns no hidden states"
        raise SettingError(
            "hidden_distill", f"cannot distill hidden states {reason}", settings.hidden_distill
        )
    levels = level_masks or [{}]
    weights = level_weights or [1.0 / len(levels)] * len(levels)
    parameters = dict(module.named_parameters())
    # fused: one kernel over all parameters; the per-tensor loop took about a tenth of a minilm-l6 step
    # (0.12-0.18 s of AdamW against 0.014 s fused, one thread).
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=settings.learning_rate, weight_decay=0.0, fused=True
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, settings))
    if keep:
        apply_masks(module, keep)
    module.train()
    with _progress() as progress:
        task = progress.add_task(description, total=settings.steps, loss=math.nan)
        for step, index in enumerate(_batches(split, settings)):
            inputs, targets = split.batch(index)
            # The teacher runs in float32, outside the autocast: its outputs are the targets.
            teacher_logits, teacher_hidden = None, None
            if teacher is not None and settings.hidden_distill > 0.0:
                teacher_logits, teacher_hidden = teacher.logits_and_hidden_states(inputs)
            elif teacher is not None and settings.distill > 0.0:  # else its logits would go unused
                teacher_logits = teacher.logits(split, index, inputs)
            with torch.autocast("cpu", torch.bfloat16, enabled=settings.precision == "bfloat16"):
                loss = _step_loss(
                    module, inputs, targets, levels, weights, teacher_logits, teacher_hidden, settings
                )
            total = loss + penalty() if penalty is not None else loss
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if keep:
                for name, mask in keep.items():
                    parameters[name].grad.mul_(mask)
            optimizer.step()
            schedule.step()
            if keep:
                apply_masks(module, keep)
            if every_step is not None:
                every_step(step)
            progress.update(task, advance=1, loss=float(loss.detach()))
    module.eval()


@torch.no_grad()
def evaluate(model: LoadedModel, split: Split, masks: Masks | None = None, batch_size: int = 128) -> dict:
    """Classifiers: {"accuracy"}. Language models: {"perplexity", "accuracy"} (next-token accuracy)."""
    model.module.eval()
    loss_sum, correct, count = 0.0, 0, 0
    # Rows in order of length, so a batch pads little (the metrics do not depend on the order).
    for index in torch.argsort(split.lengths(), stable=True).split(batch_size):
        inputs, targets = split.batch(index)
        logits = run(model.module, inputs, masks)
        loss_sum += float(loss_of(logits, targets)) * targets.numel()
        correct += int((logits.argmax(dim=-1) == targets).sum())
        count += targets.numel()
    metrics = {"accuracy": correct / count}
    if model.kind == "language-model":
        metrics["perplexity"] = math.exp(loss_sum / count)
    return metrics
