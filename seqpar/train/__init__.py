"""Training: the loop, the SP-exact loss, checkpoints and the ``seqpar train`` CLI."""

from .config import TrainConfig
from .loop import TrainResult, train
from .loss import LossOutput, sp_exact_loss

__all__ = ["LossOutput", "TrainConfig", "TrainResult", "sp_exact_loss", "train"]
