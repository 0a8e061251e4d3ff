"""Generator for notebooks/solutions/06_pretraining.ipynb."""

from solbuild import Exercise, build

EXERCISES = [
    Exercise("1. Warmup-stable-decay", "check_wsd", "wsd", r'''
def wsd(step, warmup, stable, decay, min_ratio=0.0):
    if step < warmup:
        return min_ratio + (1 - min_ratio) * step / warmup
    if step < warmup + stable:
        return 1.0
    if step < warmup + stable + decay:
        progress = (step - warmup - stable) / decay
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return min_ratio
'''),
    Exercise("2. One AdamW step by hand", "check_adamw_step", "adamw_step", r'''
def adamw_step(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay):
    beta1, beta2 = betas
    param = param * (1 - lr * weight_decay)  # decoupled: the decay never enters m or v
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    m_hat = exp_avg / (1 - beta1 ** step)
    v_hat = exp_avg_sq / (1 - beta2 ** step)
    return param - lr * m_hat / (v_hat.sqrt() + eps), exp_avg, exp_avg_sq
'''),
]

if __name__ == "__main__":
    print(build("06_pretraining.ipynb", "Lesson 06, pretraining", EXERCISES))
