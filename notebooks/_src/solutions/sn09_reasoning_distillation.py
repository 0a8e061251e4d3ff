"""Generator for notebooks/solutions/09_reasoning_distillation.ipynb."""

from solbuild import Exercise, build

EXERCISES = [
    Exercise("1. KL divergence", "check_kl", "kl", r'''
def kl(log_p, log_q):
    return (log_p.exp() * (log_p - log_q)).sum(-1)
'''),
    Exercise("2. The generalized Jensen-Shannon divergence", "check_generalized_jsd", "jsd", r'''
def jsd(student_logits, teacher_logits, beta):
    log_s, log_t = student_logits.log_softmax(-1), teacher_logits.log_softmax(-1)
    if beta == 0:
        return kl(log_t, log_s)
    if beta == 1:
        return kl(log_s, log_t)
    log_m = torch.logaddexp(log_s + math.log(1 - beta), log_t + math.log(beta))
    return beta * kl(log_t, log_m) + (1 - beta) * kl(log_s, log_m)
'''),
]

if __name__ == "__main__":
    print(build("09_reasoning_distillation.ipynb", "Lesson 09, reasoning distillation", EXERCISES))
