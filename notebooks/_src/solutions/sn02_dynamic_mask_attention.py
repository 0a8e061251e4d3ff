"""Generator for notebooks/solutions/02_dynamic_mask_attention.ipynb."""

from solbuild import Exercise, build

EXERCISES = [
    Exercise("1. Causal attention", "check_causal_attention", "causal_attention", r'''
def causal_attention(q, k, v):
    t = q.shape[-2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1) @ v
'''),
    Exercise("2. The dynamic bias", "check_dynamic_bias", "dynamic_bias", r'''
def dynamic_bias(v, dt_weight, A):
    b, n_kv, s, d = v.shape
    dt = v.transpose(1, 2).reshape(b, s, n_kv * d) @ dt_weight.T  # [B, S, n_kv]
    return torch.exp(A * F.softplus(dt)).transpose(1, 2)
'''),
    Exercise("3. The keep-window mask", "check_dynamic_mask", "dynamic_mask", r'''
def dynamic_mask(bias, allowed, keep_window_size):
    b, h, s = bias.shape
    neg = torch.finfo(torch.float32).min
    mask = bias[:, :, None, :].expand(b, h, allowed.shape[-2], s).masked_fill(~allowed, neg)
    if s > keep_window_size:
        top = mask.topk(keep_window_size, dim=-1).indices
        kept = torch.zeros_like(mask, dtype=torch.bool).scatter(-1, top, True)
        mask = mask.masked_fill(~kept, neg)
    return mask
'''),
]

if __name__ == "__main__":
    print(build("02_dynamic_mask_attention.ipynb", "Lesson 02, Dynamic Mask Attention", EXERCISES))
