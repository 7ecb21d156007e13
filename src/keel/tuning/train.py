"""Fine-tuning with sentence-transformers' trainers, seeded, on the CPU.

* :func:`train_embeddings`: the bi-encoder, ``MultipleNegativesRankingLoss`` over (query,
  positive, hard negative) triplets plus every other passage of the batch as a negative, with
  a batch sampler that never puts the same text twice in a batch.
* :func:`train_reranker`: a ``CrossEncoder`` started from the same base model's transformer
  (a fresh scoring head), trained with the cross-encoder ``MultipleNegativesRankingLoss`` on
  the same triplets.

Both write the model to a folder; :mod:`keel.tuning.artefacts` files it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from keel.tuning.pairs import TrainingPair

__all__ = ["TrainParams", "train_embeddings", "train_reranker"]


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 3e-5
    warmup_ratio: float = 0.1
    max_seq_length: int = 128
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def _quiet(show_progress: bool) -> Iterator[None]:
    """No trainer chatter on stdout, no telemetry, no network (the base model is local)."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "WANDB_DISABLED")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["WANDB_DISABLED"] = "true"
    level = logging.getLogger("transformers").level
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        with redirect_stdout(sys.stderr):  # the trainers print their summaries: not on stdout
            yield
    finally:
        logging.getLogger("transformers").setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _common_args(params: TrainParams, out: Path, show_progress: bool) -> dict[str, Any]:
    return {
        "output_dir": str(out / "_trainer"),
        "num_train_epochs": params.epochs,
        "per_device_train_batch_size": params.batch_size,
        "learning_rate": params.learning_rate,
        "warmup_ratio": params.warmup_ratio,
        "seed": params.seed,
        "data_seed": params.seed,
        "report_to": [],
        "save_strategy": "no",
        "logging_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": not show_progress,
        "dataloader_num_workers": 0,
    }


def train_embeddings(
    base: str,
    pairs: Sequence[TrainingPair],
    params: TrainParams,
    out: Path,
    *,
    show_progress: bool = False,
) -> None:
    """Fine-tune the sentence-transformers model at ``base`` and save it to ``out``."""
    import shutil

    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers import set_seed

    with _quiet(show_progress):
        set_seed(params.seed)
        model = SentenceTransformer(base, device="cpu", local_files_only=True)
        model.max_seq_length = params.max_seq_length
        data = Dataset.from_dict(
            {
                "anchor": [p.query for p in pairs],
                "positive": [p.positive for p in pairs],
                "negative": [p.negative for p in pairs],
            }
        )
        args = SentenceTransformerTrainingArguments(
            **_common_args(params, out, show_progress),
            batch_sampler=BatchSamplers.NO_DUPLICATES,
        )
        loss = losses.MultipleNegativesRankingLoss(model)
        SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss).train()
        shutil.rmtree(out / "_trainer", ignore_errors=True)
        model.save(str(out))


def train_reranker(
    base: str,
    pairs: Sequence[TrainingPair],
    params: TrainParams,
    out: Path,
    *,
    show_progress: bool = False,
) -> None:
    """Train a cross-encoder from the transformer at ``base`` and save it to ``out``."""
    import shutil

    from datasets import Dataset
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder import (
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
        losses,
    )
    from transformers import set_seed

    with _quiet(show_progress):
        set_seed(params.seed)
        model = CrossEncoder(
            base,
            num_labels=1,
            device="cpu",
            max_length=params.max_seq_length,
            local_files_only=True,
        )
        data = Dataset.from_dict(
            {
                "query": [p.query for p in pairs],
                "positive": [p.positive for p in pairs],
                "negative": [p.negative for p in pairs],
            }
        )
        args = CrossEncoderTrainingArguments(**_common_args(params, out, show_progress))
        loss = losses.MultipleNegativesRankingLoss(model)
        CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=loss).train()
        shutil.rmtree(out / "_trainer", ignore_errors=True)
        model.save(str(out))
