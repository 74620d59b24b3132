"""Training: the loop, the step, the SP-exact loss, checkpoints and the ``seqpar train`` CLI."""

from .config import TrainConfig
from .loop import TrainResult, train
from .loss import LossOutput, sp_exact_loss
from .preemption import Preempted
from .step import StepOutput, train_step

__all__ = ["LossOutput", "Preempted", "StepOutput", "TrainConfig", "TrainResult",
           "sp_exact_loss", "train", "train_step"]
