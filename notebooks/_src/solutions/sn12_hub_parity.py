"""Generator for notebooks/solutions/12_hub_parity.ipynb."""

from solbuild import Exercise, build

EXERCISES = [
    Exercise("1. Expanding classic KV heads", "check_expand_kv", "expand_kv", r'''
def expand_kv(k_weight, n_heads, n_kv, head_dim):
    heads = k_weight.reshape(n_kv, head_dim, -1)
    return heads.repeat_interleave(n_heads // n_kv, dim=0).reshape(n_heads * head_dim, -1)
'''),
    Exercise("2. The first diverging module", "check_first_divergence", "first_divergence", r'''
def first_divergence(ours, reference, rtol, atol):
    for name, out in ours.items():  # dicts keep the order the hooks recorded: the forward order
        if not torch.allclose(out, reference[name], rtol=rtol, atol=atol):
            return name
    return None
'''),
]

if __name__ == "__main__":
    print(build("12_hub_parity.ipynb", "Lesson 12, hub parity", EXERCISES))
