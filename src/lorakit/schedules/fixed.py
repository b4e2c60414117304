"""The fixed schedule: every targeted layer keeps its adapter at rank ``r`` throughout."""

from . import SCHEDULES
from .base import Schedule


class Fixed(Schedule):
    """Nothing changes during training."""


SCHEDULES.register("fixed")(Fixed())
