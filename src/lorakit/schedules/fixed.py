"""The fixed schedule: every targeted layer keeps its adapter at rank ``r`` throughout."""

from typing import ClassVar

from .base import SCHEDULES, Schedule


@SCHEDULES.register("fixed")
class Fixed(Schedule):
    """Nothing changes during training."""

    summary: ClassVar[str] = "every layer keeps rank r"
