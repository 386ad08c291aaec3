"""Task heads in distillation: finding them in checkpoints, giving the student its own, and the QA-question batches.

A task head (e.g. the EgoTaskQA answer head over the fused video CLS, reference Sec. 3) is distilled by KL of its
softened logits (:func:`~._distill_losses.logit_kl`) on two kinds of fused inputs:

* the distillation batches' fused pairs (narrations with clips), in ``DistillTask._vtm``;
* for the ``"qa"`` head, questions of the QA split (``data/qa.json``, train) with their clips
  (:class:`QABatches`, :func:`question_head_kl`): the inputs the head really answers on the device.

When the teacher checkpoint carries a head and the student's init does not, the student gets a fresh head of its
own width (:meth:`FinetunedQAHook.create`), saved in the ``task`` entry ``load_finetuned`` and the exporter read.
Private helpers of :mod:`egovlpv2_edge.compress.distill`, which re-exports the public names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from egovlpv2_edge.compress._distill_losses import DistillError, logit_kl
from egovlpv2_edge.model import EgoVLPv2
from egovlpv2_edge.model.egovlpv2 import FusionOutput
from egovlpv2_edge.tokenizer import Tokenizer
from egovlpv2_edge.training.distributed import DistInfo, all_reduce_sum
from egovlpv2_edge.training.trainer import GlobalBatchSampler, _worker_init

log = logging.getLogger(__name__)

QA_HEAD = "qa"  # the hook (and head) name of the QA answer head; the QA-question batches feed it


class HeadHook(Protocol):
    """How distillation finds, runs and saves one task head (e.g. a QA answer head over the fused video CLS).

    A task module defines one per head; :func:`default_head_hooks` looks them up in
    ``egovlpv2_edge.training.tasks.distill_head_hooks()`` when that exists. Nothing here imports the task code.
    A hook may also define ``create(teacher_head, model) -> nn.Module``: a fresh student head for ``model`` when
    the teacher checkpoint has the head and the student's init does not (without it, such a head is skipped).
    """

    def load(self, checkpoint: Mapping[str, Any], model: EgoVLPv2) -> nn.Module | None:
        """The head stored in ``checkpoint`` for ``model``, or None when the checkpoint carries no such head."""
        ...

    def logits(self, head: nn.Module, fused: FusionOutput) -> torch.Tensor:
        """The head's class logits ``(B, C)`` for a fused forward pass."""
        ...

    def save(self, head: nn.Module) -> dict[str, Any]:
        """Checkpoint entries (weights, answer vocabulary) that let :meth:`load` restore ``head``."""
        ...


def _fusion_qa_head(task: Any) -> nn.Module | None:
    """The QA head of a checkpoint's ``task`` entry when it reads the fused video CLS (fusion mode), else None."""
    from egovlpv2_edge.training.tasks.checkpoint import qa_task_head

    found = qa_task_head(task)
    return found[0] if found is not None and found[1] == "fusion" else None


class FinetunedQAHook:
    """The QA answer head of ``training.tasks`` checkpoints (``ckpt["task"]``, fusion mode: the head reads the
    fused video CLS). Dual-mode QA heads read unfused features and are not distilled here."""

    def __init__(self) -> None:
        self._payloads: dict[int, dict[str, Any]] = {}  # id(head) -> the task entry it came from

    def load(self, checkpoint: Mapping[str, Any], model: EgoVLPv2) -> nn.Module | None:
        """The fusion-mode QA head of ``checkpoint["task"]``, or None."""
        task = checkpoint.get("task")
        head = _fusion_qa_head(task)
        if head is None:
            return None
        if task["head_config"].get("in_dim") != model.cfg.video.width:
            raise DistillError(f"QA head in_dim {task['head_config'].get('in_dim')} does not fit the video width "
                               f"{model.cfg.video.width} of the model stored with it")  # fmt: skip
        self._payloads[id(head)] = dict(task)
        return head

    def create(self, teacher_head: nn.Module, model: EgoVLPv2) -> nn.Module:
        """A fresh ``QAHead`` over ``model``'s fused video CLS with the teacher head's answers and dropout; every
        teacher tensor whose shape fits (the answer-to-answer layer, whose bias holds the answer prior) is copied."""
        from egovlpv2_edge.training.tasks.heads import QAHead

        config = teacher_head.config()  # type: ignore[operator]
        head = QAHead(model.cfg.video.width, config["num_answers"], config["dropout"])
        theirs = teacher_head.state_dict()
        with torch.no_grad():
            for key, tensor in head.state_dict().items():
                if key in theirs and theirs[key].shape == tensor.shape:
                    tensor.copy_(theirs[key])
        self._payloads[id(head)] = dict(self._payloads.get(id(teacher_head), {}))  # its answers and params
        return head

    def logits(self, head: nn.Module, fused: FusionOutput) -> Tensor:
        """Answer logits ``(B, A)`` from the fusion-normed video CLS (as ``QATask.features`` in fusion mode)."""
        return head(fused.video_cls)

    def save(self, head: nn.Module) -> dict[str, Any]:
        """The ``task`` entry with the student's head weights and config."""
        payload = dict(self._payloads.get(id(head), {"name": "qa", "mode": "fusion", "vocab": {}, "params": {}}))
        payload |= {"head": head.state_dict(), "head_config": head.config()}  # type: ignore[operator]
        return {"task": payload}

    def params(self, head: nn.Module) -> dict[str, Any]:
        """The task ``params`` of the checkpoint a head came from (e.g. the question ``text_length``)."""
        return dict(self._payloads.get(id(head), {}).get("params") or {})

    def answers(self, head: nn.Module) -> tuple[str, ...]:
        """The answers a head scores (index = class id), from the checkpoint it came from; () when unknown."""
        vocab = self._payloads.get(id(head), {}).get("vocab") or {}
        return tuple(vocab.get("answers") or ())


def default_head_hooks() -> dict[str, HeadHook]:
    """The built-in QA hook plus any published by the task modules (``training.tasks.distill_head_hooks()``)."""
    hooks: dict[str, HeadHook] = {QA_HEAD: FinetunedQAHook()}
    try:
        from egovlpv2_edge.training import tasks
    except ImportError:
        return hooks
    published = getattr(tasks, "distill_head_hooks", None)
    return hooks | (dict(published()) if callable(published) else {})


def head_pairs(
    hooks: Mapping[str, HeadHook],
    teacher_ckpt: Mapping[str, Any],
    teacher: EgoVLPv2,
    student_ckpt: Mapping[str, Any] | None,
    student: EgoVLPv2,
) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """Teacher and student heads for every hook whose head the teacher checkpoint carries.

    The student's head comes from its init checkpoint, else from the hook's ``create`` (a fresh head of the
    student's width); heads the teacher lacks, or that neither gives the student, are logged and skipped.
    """
    t_heads: dict[str, nn.Module] = {}
    s_heads: dict[str, nn.Module] = {}
    for name, hook in hooks.items():
        t = hook.load(teacher_ckpt, teacher)
        s = hook.load(student_ckpt, student) if student_ckpt is not None else None
        create = getattr(hook, "create", None)
        if t is not None and s is None and callable(create):
            s = create(t, student)
            log.info("task head %r: the student gets a fresh head, distilled from the teacher's", name)
        if t is None or s is None:
            log.info("task head %r: not distilled (teacher has it: %s, student has it: %s)", name, t is not None,
                     s is not None)  # fmt: skip
            continue
        t_heads[name], s_heads[name] = t.eval().requires_grad_(False), s
    return t_heads, s_heads


def fresh_qa_head(student_heads: Mapping[str, nn.Module], student_ckpt: Mapping[str, Any] | None) -> bool:
    """Whether the student distils a QA head its init checkpoint did not carry (a fresh one, see ``head_pairs``):
    the same test :meth:`FinetunedQAHook.load` applies to the init checkpoint."""
    if QA_HEAD not in student_heads:
        return False
    return student_ckpt is None or _fusion_qa_head(student_ckpt.get("task")) is None


# ----- QA questions -------------------------------------------------------------------------------------------------


class QABatches:
    """One batch of QA-split train questions per step, the same for a step whatever ran before (exact resume).

    Args:
        data: The QA dataset (train split, train-time sampling) at the student's frame count and size.
        batch: Global questions per step (this process reads its share).
        info: The process's rank, world size and device.
        seed: Run seed (the question order is seeded apart from the clips').
        num_workers: Decoding processes.
        tokenizers: Student and teacher tokenizers (the same object when they share one).
        lengths: Student and teacher question lengths in tokens (as the teacher's QA fine-tuning used).
    """

    def __init__(self, data: Any, batch: int, info: DistInfo, seed: int, num_workers: int,
                 tokenizers: tuple[Tokenizer, Tokenizer], lengths: tuple[int, int]) -> None:  # fmt: skip
        self.data, self.num_workers, self.device = data, num_workers, info.device
        self.tokenizers, self.lengths = tokenizers, lengths
        self.sampler = GlobalBatchSampler(len(data), batch, info.rank, info.world_size, seed * 31 + 17)
        self.steps_per_epoch = len(data) // batch
        self._it: Iterator[dict[str, Any]] | None = None
        self._next: tuple[int, int] | None = None  # (epoch, batch) the open iterator yields next

    def at(self, step: int) -> dict[str, Any]:
        """The (collated) questions of ``step``."""
        from egovlpv2_edge.training.data.qa import collate_qa

        where = divmod(step, self.steps_per_epoch)
        if self._it is None or where != self._next:
            self.sampler.set_epoch(*where)
            self.data.set_epoch(where[0])
            # its own generator: opening it mid-run must not draw from the global RNG that the step's dropout uses
            seeds = torch.Generator().manual_seed(self.sampler.seed + where[0])
            loader = DataLoader(self.data, batch_sampler=self.sampler, collate_fn=collate_qa,
                                num_workers=self.num_workers, worker_init_fn=_worker_init, generator=seeds)  # fmt: skip
            self._it = iter(loader)
        batch = next(self._it)
        epoch, index = where
        self._next = (epoch, index + 1) if index + 1 < self.steps_per_epoch else None
        return batch

    def feeds(self, step: int) -> dict[str, Tensor]:
        """The questions of ``step`` ready for ``DistillTask.forward(qa=...)``: clips and both models' tokens."""
        batch = self.at(step)
        (s_tok, t_tok), (s_len, t_len) = self.tokenizers, self.lengths
        tokens = question_tokens(batch["question"], s_tok, s_len, t_tok, t_len, self.device)
        return {"video": batch["video"].to(self.device, non_blocking=True), **tokens}


def qa_batches(data_root: str | Path, task: Any, batch: int, info: DistInfo, seed: int, num_workers: int,
               tokenizers: tuple[Tokenizer, Tokenizer]) -> QABatches | None:  # fmt: skip
    """QA-question batches from ``data_root/qa.json`` (train split) for the task's QA head.

    Returns:
        The batches, or None (logged) without a QA head, with ``batch == 0``, or when there are no questions.
    """
    from egovlpv2_edge.training.data.qa import QADataset, read_qa
    from egovlpv2_edge.training.tasks._setup import ensure_task_files, read_meta
    from egovlpv2_edge.training.tasks.qa import qa_text_length

    if QA_HEAD not in task.heads or batch == 0:
        return None
    student = task.student
    root = Path(data_root)
    try:
        qa = read_qa(ensure_task_files(root, "qa.json"))
        v = student.cfg.video
        data = QADataset(qa, root / "videos", "train", v.num_frames, v.img_size, "train", read_meta(root), seed)
    except (FileNotFoundError, ValueError) as err:
        log.info("QA head distilled on the narration pairs only: no QA questions (%s)", err)
        return None
    batch = min(batch, len(data)) // info.world_size * info.world_size
    if batch < 1:
        log.info("QA head distilled on the narration pairs only: %d train questions", len(data))
        return None
    params_of = getattr(task.hooks[QA_HEAD], "params", None)
    params = params_of(task.teacher_heads[QA_HEAD]) if callable(params_of) else {}
    wanted = int(params.get("text_length", 30))  # the length the teacher's head was fine-tuned with
    lengths = (qa_text_length(student, wanted), qa_text_length(task.teacher, wanted))
    log.info("QA head also distilled on %d train questions, %d per step", len(data), batch)
    return QABatches(data, batch, info, seed, num_workers, tokenizers, lengths)


def question_tokens(questions: list[str], s_tok: Tokenizer, s_len: int, t_tok: Tokenizer, t_len: int,
                    device: torch.device) -> dict[str, Tensor]:  # fmt: skip
    """Student and teacher ids and masks of the questions, each at its model's question length."""
    s = s_tok.encode(questions, max_length=s_len)
    t = s if t_tok is s_tok and t_len == s_len else t_tok.encode(questions, max_length=t_len)
    return {
        "ids": torch.from_numpy(s.input_ids).to(device),
        "mask": torch.from_numpy(s.attention_mask).to(device),
        "t_ids": torch.from_numpy(t.input_ids).to(device),
        "t_mask": torch.from_numpy(t.attention_mask).to(device),
    }


def warm_student_qa_head(task: Any, qa: QABatches, epochs: int, seed: int, show: bool = True) -> float | None:
    """Fit the student's QA head alone on the student's fused video CLS of the QA train questions (at most
    :data:`~egovlpv2_edge.training.tasks._setup.WARM_START_QUESTIONS` of them; one pass, no gradients into the
    student), before the fused terms start.

    A fresh student head meets features that the dual-only steps have just moved; trained from there by KL alone
    for a few fused steps it settles on one answer. Fitted first on the questions' answers (as the teacher's head
    was fine-tuned), it starts where the teacher's fine-tuning put the teacher's. Every process fits the same head
    on the same questions. Returns the fitted head's train accuracy, or None when the QA head is not a ``QAHead``.
    """
    from egovlpv2_edge.progress import progress
    from egovlpv2_edge.training.data.qa import collate_qa
    from egovlpv2_edge.training.tasks._setup import warm_start_subset
    from egovlpv2_edge.training.tasks.heads import QAHead, fit_qa_head, head_accuracy

    head, hook = task.heads[QA_HEAD], task.hooks[QA_HEAD]
    if not isinstance(head, QAHead):
        log.info("QA head warm start skipped: the student's QA head is a %s, not a QAHead", type(head).__name__)
        return None
    answers_of = getattr(hook, "answers", None)
    theirs = {a: i for i, a in enumerate(answers_of(head) if callable(answers_of) else ())}
    to_head = {i: theirs[a] for a, i in qa.data.index.items() if a in theirs}  # data's answer id -> head's
    if not to_head:
        log.info("QA head warm start skipped: no answer of the QA split is in the head's vocabulary")
        return None
    (s_tok, t_tok), (s_len, t_len) = qa.tokenizers, qa.lengths
    loader = DataLoader(warm_start_subset(qa.data, seed), batch_size=64, collate_fn=collate_qa,
                        num_workers=qa.num_workers, worker_init_fn=_worker_init,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    student, xs, ys = task.student, [], []
    was_training = student.training
    student.eval()
    with torch.no_grad():
        for b in progress(loader, desc="student QA head warm start", disable=not show, leave=False):
            tok = question_tokens(b["question"], s_tok, s_len, t_tok, t_len, qa.device)
            out = student.forward_fusion(b["video"].to(qa.device), tok["ids"], tok["mask"])
            xs.append(hook.logits(_FeatureTap(), out).cpu())
            ys.append(torch.tensor([to_head.get(int(a), -1) for a in b["answer"]]))
    student.train(was_training)
    x, y = torch.cat(xs), torch.cat(ys)
    known = y >= 0  # questions whose answer the head scores
    x, y = x[known], y[known]
    loss = fit_qa_head(head, x, y, epochs, seed=seed)
    acc = head_accuracy(head, x, y)
    if show:
        log.info("student QA head warm start: %d epochs on %d questions' fused features, loss %.3f, train accuracy "
                 "%.3f", epochs, len(y), loss, acc)  # fmt: skip
    return acc


def fit_student_dual_qa_head(task: Any, teacher_ckpt: Mapping[str, Any], tokenizer: Tokenizer, data_root: str | Path,
                             epochs: int, seed: int) -> dict[str, Any] | None:  # fmt: skip
    """The student's gates-off QA head (:func:`~egovlpv2_edge.training.tasks.qa.fit_dual_qa_head` on the distilled
    student), over the answers of its QA head (else the teacher's QA vocabulary); None when ``epochs`` is 0 or the
    data has no ``qa.json`` or no answer vocabulary is known (logged)."""
    from egovlpv2_edge.training.tasks.qa import fit_dual_qa_head

    if epochs <= 0:
        return None
    answers: tuple[str, ...] = ()
    if QA_HEAD in task.heads:
        answers_of = getattr(task.hooks[QA_HEAD], "answers", None)
        answers = tuple(answers_of(task.heads[QA_HEAD])) if callable(answers_of) else ()
    if not answers:
        t_task = teacher_ckpt.get("task")
        answers = tuple(((t_task.get("vocab") or {}).get("answers") or ()) if isinstance(t_task, Mapping) else ())
    if not answers or not (Path(data_root) / "qa.json").is_file():
        log.info("no dual QA head for the student: %s", "no answer vocabulary" if not answers else "no qa.json")
        return None
    try:
        return fit_dual_qa_head(task.student, tokenizer, data_root, answers, epochs, seed=seed)
    except ValueError as err:  # e.g. a head vocabulary that shares no answer with the QA split
        log.warning("no dual QA head for the student: %s", err)
        return None


class _FeatureTap(nn.Module):
    """Stands in for a head in ``hook.logits(head, fused)``: returns the features the hook feeds the head."""

    def forward(self, x: Tensor) -> Tensor:
        return x


def question_head_kl(task: Any, qa: Mapping[str, Tensor], temperature: float) -> Tensor:
    """KL of the QA head's softened logits, student against teacher, on QA questions with their clips.

    Args:
        task: The ``DistillTask`` (student, teacher, their heads and hooks).
        qa: This process's questions: ``video`` ``(b, F, 3, H, W)`` and the ``ids``/``mask``, ``t_ids``/``t_mask``
            of :func:`question_tokens`.
        temperature: Logit softening (t^2-scaled KL).

    Returns:
        This process's KL sum over the global question count (so the sum over processes is the global mean).
    """
    from egovlpv2_edge.compress.distill import _resize

    video = qa["video"]
    zero = video.new_zeros(())
    if QA_HEAD not in task.heads:
        return zero
    hook = task.hooks[QA_HEAD]
    out = task.student.forward_fusion(video, qa["ids"], qa["mask"])
    with torch.no_grad():
        t_video = _resize(video, task.teacher.cfg.video.img_size)
        t_out = task.teacher.forward_fusion(t_video, qa["t_ids"], qa["t_mask"])
        t_logits = hook.logits(task.teacher_heads[QA_HEAD], t_out)
    count = all_reduce_sum(torch.tensor(float(video.shape[0]), device=video.device)).clamp(min=1.0)
    return logit_kl(hook.logits(task.heads[QA_HEAD], out), t_logits, temperature, "sum") / count
