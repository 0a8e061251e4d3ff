"""Generator for notebooks/solutions/05_generation.ipynb."""

from solbuild import Exercise, build

EXERCISES = [
    Exercise("1. Repetition penalty", "check_repetition_penalty", "repetition_penalty", r'''
def repetition_penalty(scores, seen, penalty):
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)
'''),
    Exercise("2. Top-k", "check_top_k", "top_k", r'''
def top_k(scores, k):
    kth = scores.topk(k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))
'''),
    Exercise("3. Top-p", "check_top_p", "top_p", r'''
def top_p(scores, p):
    probs, order = scores.softmax(-1).sort(dim=-1, descending=True)
    before = probs.cumsum(-1) - probs  # the mass of the more likely tokens
    drop = before >= p  # the first token has 0 before it: always kept
    return scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
'''),
]

if __name__ == "__main__":
    print(build("05_generation.ipynb", "Lesson 05, generation", EXERCISES))
