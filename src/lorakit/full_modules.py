"""Modules trained in full next to the adapter: ``train_modules`` (a classifier head, ``score``,
``lm_head``, ``embed_tokens``, ...).

Their parameters are unfrozen at attach, get their own optimizer group (``modules``: the run's
learning rate and weight decay), count in the trainable parameters, and are saved whole in the
adapter file (``modules.<name>.<param>``), so that ``lorakit.load`` restores them. Merging leaves
them as trained (they are ordinary weights of the model).
"""

from __future__ import annotations

from torch import nn

from .core.options import Option
from .errors import LorakitError
from .quantized import is_quantized, within


def normalise_names(value: object) -> tuple[str, ...]:
    """A list of module-name suffixes as a tuple (a single name is a list of one)."""
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise LorakitError(f"train_modules must be a list of module-name suffixes, e.g. [lm_head], got {value!r}")


TRAIN_MODULES = Option("train_modules", object, (), "module-name suffixes trained in full next to the adapter "
                       "(e.g. [lm_head], [score]); saved in the adapter file", normalise=normalise_names,
                       null_is_default=False)


def find_full_modules(model: nn.Module, suffixes: tuple[str, ...], adapted: set[str]) -> dict[str, nn.Module]:
    """The modules whose names end with one of ``suffixes`` (outermost only, none inside an adapted
    layer); a suffix that matches nothing is a one-line error."""
    found: dict[str, nn.Module] = {}
    for suffix in suffixes:
        matches = [(name, module) for name, module in model.named_modules()
                   if (name == suffix or name.endswith("." + suffix)) and not within(name, adapted)]
        if not matches:
            raise LorakitError(f"train_modules entry {suffix!r} matches no module of this model (or only adapted "
                               "layers); give module-name suffixes such as lm_head or score")
        found.update((name, module) for name, module in matches if not within(name, found))
    for name, module in found.items():
        if any(is_quantized(m) for m in module.modules()):
            raise LorakitError(f"train_modules entry {name!r} is quantized (4 or 8 bits), which does not train in "
                               "full; load it unquantized (classifier heads are kept so) or leave it out")
    return found
