"""Automatic checks for the lessons' exercises: ``check_...(your_function)`` reports "correct", "not yet"
(the stub still raises NotImplementedError) or the first input it gets wrong, expected against got.

Each check compares with the package's own implementation (or, where the package has none, with answers
written out by hand), float results judged against a float64 evaluation the way the tests judge the package
(``testing.float32_error_check``). One module per lesson; every check is importable from here.
"""

from ._core import CheckResult
from .l00_tokenizer import check_assistant_mask, check_chat_template, check_merge
from .l01_building_blocks import check_ntk_theta, check_rms_norm, check_rotate_half
from .l02_attention import check_causal_attention, check_dynamic_bias, check_dynamic_mask
from .l03_cdmoe import check_load_balancing_loss, check_per_token_split, check_product_key_topk
from .l04_full_model import check_classic_name, check_decoder_layer, check_parameter_count
from .l05_generation import check_repetition_penalty, check_top_k, check_top_p
from .l06_pretraining import check_adamw_step, check_wsd
from .l07_sft import check_packed_positions, check_sft_loss, check_step_loss
from .l08_dpo import check_dpo_loss, check_ipo_loss, check_sequence_logps
from .l09_distillation import check_generalized_jsd, check_kl
from .l10_grpo import check_clipped_loss, check_group_advantages
from .l12_hub_parity import check_expand_kv, check_first_divergence
from .l11_evaluation import check_choice_metrics, check_mean_stderr

__all__ = [
    "CheckResult",
    "check_adamw_step",
    "check_assistant_mask",
    "check_causal_attention",
    "check_chat_template",
    "check_choice_metrics",
    "check_classic_name",
    "check_clipped_loss",
    "check_decoder_layer",
    "check_dpo_loss",
    "check_dynamic_bias",
    "check_dynamic_mask",
    "check_expand_kv",
    "check_first_divergence",
    "check_generalized_jsd",
    "check_group_advantages",
    "check_ipo_loss",
    "check_kl",
    "check_load_balancing_loss",
    "check_mean_stderr",
    "check_merge",
    "check_ntk_theta",
    "check_packed_positions",
    "check_parameter_count",
    "check_per_token_split",
    "check_product_key_topk",
    "check_repetition_penalty",
    "check_rms_norm",
    "check_rotate_half",
    "check_sequence_logps",
    "check_sft_loss",
    "check_step_loss",
    "check_top_k",
    "check_top_p",
    "check_wsd",
]
