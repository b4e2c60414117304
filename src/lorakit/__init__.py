"""lorakit: the LoRA family for Hugging Face causal language models.

>>> adapter = lorakit.attach(model, "olora_plus", rank=32, alpha=16, lr_ratio=0.5)
>>> optimizer = adapter.optimizer(lr=3e-4)
>>> adapter.save("out/adapter"); merged = adapter.merge_and_unload()
"""

__version__ = "0.1.0"

from .adapter import Adapter, attach, load  # noqa: E402
from .errors import LorakitError  # noqa: E402
from .methods import MethodSpec, method_names as methods  # noqa: E402

__all__ = ["Adapter", "LorakitError", "MethodSpec", "attach", "load", "methods", "__version__"]
