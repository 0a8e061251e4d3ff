"""Generator for notebooks/solutions/07_sft.ipynb."""

from solbuild import Exercise, build

EXERCISES = [
    Exercise("1. The SFT loss, per token", "check_sft_loss", "sft_loss", r'''
def sft_loss(logits, labels):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=-100)
'''),
    Exercise("2. The loss of an optimizer step", "check_step_loss", "step_loss", r'''
def step_loss(micro_batches):
    total = sum(F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), lab[:, 1:].reshape(-1), reduction="sum")
                for lg, lab in micro_batches)  # ignore_index=-100 is cross_entropy's default
    tokens = sum(int((lab[:, 1:] != -100).sum()) for _, lab in micro_batches)
    return total / tokens
'''),
    Exercise("3. Position ids of a packed row", "check_packed_positions", "packed_positions", r'''
def packed_positions(lengths, length):
    parts = [torch.arange(n) for n in lengths]
    return torch.cat(parts + [torch.zeros(length - sum(lengths), dtype=torch.long)])
'''),
]

if __name__ == "__main__":
    print(build("07_sft.ipynb", "Lesson 07, supervised fine-tuning", EXERCISES))
