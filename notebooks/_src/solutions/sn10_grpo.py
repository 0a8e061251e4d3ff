"""Generator for notebooks/solutions/10_grpo.ipynb."""

from solbuild import Exercise, build

EXERCISES = [
    Exercise("1. Group-relative advantages", "check_group_advantages", "advantages", r'''
def advantages(rewards, num_generations):
    groups = rewards.view(-1, num_generations)
    mean = groups.mean(1, keepdim=True)
    std = groups.std(1, keepdim=True)  # Bessel-corrected, torch's default
    return ((groups - mean) / (std + 1e-4)).flatten()
'''),
    Exercise("2. The clipped token loss", "check_clipped_loss", "clipped_loss", r'''
def clipped_loss(logps, old_logps, advantages, eps_low, eps_high):
    ratio = torch.exp(logps - old_logps)
    adv = advantages[:, None]
    return -torch.min(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
'''),
]

if __name__ == "__main__":
    print(build("10_grpo.ipynb", "Lesson 10, GRPO", EXERCISES))
