"""The one error type for user mistakes.

The library raises :class:`UserError` for anything the user can fix (an unknown
name, a bad number, missing data, a corrupt file). The CLI turns it into a clear
message and exit code 2; it never reaches the user as a traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message says what and how."""


class NonFiniteLoss(Exception):
    """Training produced a NaN or inf loss; ``epoch`` and ``step`` say where (1-based)."""

    def __init__(self, epoch: int, step: int, value: float):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(
            f"the training loss became {value} at epoch {epoch}, step {step}; "
            "the run stopped and keeps its last good checkpoint. "
            "Try a smaller --lr or --lambda-jr."
        )
