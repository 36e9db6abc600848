"""Training losses, one per module: contrastive (InfoNCE), listwise CE, listwise KL distillation,
AR2's adversarial retriever loss, and DDP helpers."""

from jrr_pipeline.ml.losses.adversarial import AR2RetrieverLoss
from jrr_pipeline.ml.losses.contrastive import InfoNCELoss
from jrr_pipeline.ml.losses.distillation import ListwiseKLLoss
from jrr_pipeline.ml.losses.distributed import gather_with_grad
from jrr_pipeline.ml.losses.listwise import ListwiseCELoss

__all__ = ["AR2RetrieverLoss", "InfoNCELoss", "ListwiseCELoss", "ListwiseKLLoss", "gather_with_grad"]
