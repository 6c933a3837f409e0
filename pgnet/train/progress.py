"""The progress of a training run on the terminal and in its log: the tqdm bar of each epoch, a log
line for each logged step and the unreadable samples an epoch skipped."""

from __future__ import annotations

from tqdm import tqdm

from pgnet.train.callbacks import Callback, StepResult, Trainer


class Progress(Callback):
    """The bar of the epoch in progress (rank 0; its loss, learning rate and speed), the log line of
    every logged step (``train.log_every``; rank 0) and a warning for the unreadable samples an epoch
    left out."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.bar = tqdm(total=trainer.steps_per_epoch, initial=trainer.position.step_in_epoch,
                        desc=f"epoch {epoch + 1}/{trainer.config.train.epochs}", disable=not trainer.dist.is_main,
                        dynamic_ncols=True, leave=False)

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        self.bar.update(1)
        if not result.updated:
            return
        lr = trainer.optimizer.param_groups[-1]["lr"]
        self.bar.set_postfix(loss=f"{result.losses['total']:.4f}", lr=f"{lr:.2e}",
                             img_s=f"{result.images_per_second:.1f}")
        if result.log and trainer.dist.is_main:
            trainer.logger.info("step %d: %s, lr %.3g, %.1f img/s", result.step,
                                ", ".join(f"{k} {v:.4f}" for k, v in result.losses.items()), lr,
                                result.images_per_second)

    def on_train_epoch_end(self, trainer: Trainer, epoch: int, skipped: int) -> None:
        self.bar.close()
        if skipped:
            trainer.logger.warning("epoch %d: %d unreadable samples skipped (named in the warnings above)",
                                   epoch + 1, skipped)

    def teardown(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
