"""Training losses, one per module: contrastive (InfoNCE), listwise CE, and DDP helpers."""

from jrr_pipeline.ml.losses.contrastive import InfoNCELoss
from jrr_pipeline.ml.losses.distributed import gather_with_grad
from jrr_pipeline.ml.losses.listwise import ListwiseCELoss

__all__ = ["InfoNCELoss", "ListwiseCELoss", "gather_with_grad"]
