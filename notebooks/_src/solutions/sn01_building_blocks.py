"""Generator for notebooks/solutions/01_building_blocks.ipynb."""

from solbuild import Exercise, build

EXERCISES = [
    Exercise("1. RMSNorm", "check_rms_norm", "rms_norm", r'''
def rms_norm(x, weight, eps=1e-6):
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
'''),
    Exercise("2. rotate_half", "check_rotate_half", "rotate_half", r'''
def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)
'''),
    Exercise("3. The dynamic NTK base", "check_ntk_theta", "ntk_theta", r'''
def ntk_theta(theta, factor, seq_len, max_positions, head_dim):
    seq_len = max(seq_len, max_positions)  # nothing changes inside the trained length
    return theta * (factor * seq_len / max_positions - (factor - 1)) ** (head_dim / (head_dim - 2))
'''),
]

if __name__ == "__main__":
    print(build("01_building_blocks.ipynb", "Lesson 01, RMSNorm and RoPE", EXERCISES))
