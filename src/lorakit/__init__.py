"""lorakit: the LoRA family for Hugging Face causal language models.

>>> adapter = lorakit.attach(model, "olora_plus", rank=32, alpha=16, lr_ratio=0.5)
>>> optimizer = adapter.optimizer(lr=3e-4)
>>> adapter.save("out/adapter"); merged = adapter.merge_and_unload()
"""

from .adapter import Adapter
from .api import attach, load
from .combine import combine
from .core.spec import MethodSpec
from .errors import LorakitError
from .peft_import import load_peft
from .presets import method_names as methods
from .version import __version__

__all__ = ["Adapter", "LorakitError", "MethodSpec", "attach", "combine", "load", "load_peft", "methods",
           "__version__"]
