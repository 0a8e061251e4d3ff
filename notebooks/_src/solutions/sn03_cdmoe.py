"""Generator for notebooks/solutions/03_cdmoe.ipynb."""

from solbuild import Exercise, build

EXERCISES = [
    Exercise("1. Product-key top-k", "check_product_key_topk", "product_key_topk", r'''
def product_key_topk(sx, sy, k):
    scores = (sx[:, :, None] + sy[:, None, :]).flatten(1)  # pair (i, j) sits at i * K + j: its expert id
    return scores.topk(k, dim=-1)
'''),
    Exercise("2. The per-token router split", "check_per_token_split", "per_token_split", r'''
def per_token_split(logits):
    b, t, two_k = logits.shape
    return logits.reshape(b * t, 2, two_k // 2).transpose(0, 1)
'''),
    Exercise("3. The Switch load-balancing loss", "check_load_balancing_loss", "load_balancing_loss", r'''
def load_balancing_loss(router_halves, num_experts, top_k):
    picks, probs = [], []
    for sx, sy in router_halves:
        scores = (sx[:, :, None] + sy[:, None, :]).flatten(1)  # [N, K*K], column = expert id
        picks.append(scores.topk(top_k, dim=-1).indices)
        probs.append(scores.softmax(dim=-1))
    picks, probs = torch.cat(picks), torch.cat(probs)
    share = torch.bincount(picks.flatten(), minlength=num_experts).to(probs.dtype) / picks.numel()
    return num_experts * (share * probs.mean(0)).sum()
'''),
]

if __name__ == "__main__":
    print(build("03_cdmoe.ipynb", "Lesson 03, Cross Domain Mixture of Experts", EXERCISES))
