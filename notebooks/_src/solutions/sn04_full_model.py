"""Generator for notebooks/solutions/04_full_model.ipynb."""

from solbuild import Exercise, build

EXERCISES = [
    Exercise("1. The decoder layer", "check_decoder_layer", "decoder_layer", r'''
def decoder_layer(layer, x, position_embeddings):
    h = layer.self_attn(layer.input_layernorm(x), position_embeddings)
    x = layer.input_residual * x + h
    h = layer.mlp(layer.post_attention_layernorm(x))
    if isinstance(h, tuple):  # a CDMoE also returns its router halves
        h = h[0]
    return layer.post_attention_residual * x + h
'''),
    Exercise("2. Counting parameters", "check_parameter_count", "count_parameters", r'''
def count_parameters(c):
    h, d = c.hidden_size, c.head_dim
    q, kv = c.num_attention_heads * d, c.num_key_value_heads * d
    attention = h * q + 2 * h * kv + q * h + 2 * d  # q, k, v, o projections, q_norm and k_norm
    attention += kv * c.num_key_value_heads + c.num_key_value_heads  # dt_proj and A
    mlp = 3 * h * c.intermediate_size
    if c.is_moe:
        mlp += h * 2 * c.num_keys + 2 * c.num_experts * h  # router_gate, down_embed, up_embed
    layer = attention + mlp + 4 * h  # two norms, two residual vectors
    head = 0 if c.tie_word_embeddings else c.vocab_size * h
    return c.vocab_size * h + c.num_hidden_layers * layer + h + head
'''),
    Exercise("3. Classic key names", "check_classic_name", "classic_name", r'''
RENAMES = [("model.word_embed.", "model.embed_tokens."), ("model.final_layernorm.", "model.norm."),
           (".pre_layernorm.", ".input_layernorm."), (".pre_residual.weight", ".input_residual"),
           (".post_layernorm.", ".post_attention_layernorm."),
           (".post_residual.weight", ".post_attention_residual"), (".feed_forward.", ".mlp.")]


def classic_name(key):
    for old, new in RENAMES:
        key = key.replace(old, new)
    return key
'''),
]

if __name__ == "__main__":
    print(build("04_full_model.ipynb", "Lesson 04, the full model", EXERCISES))
