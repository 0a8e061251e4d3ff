"""doge-from-scratch: the SmallDoge Doge models rebuilt from first principles.

    from doge_from_scratch import DogeConfig, DogeForCausalLM
"""

from .config import DogeConfig
from .model import DogeForCausalLM, DogeModel

__all__ = ["DogeConfig", "DogeForCausalLM", "DogeModel"]
__version__ = "0.1.0"
