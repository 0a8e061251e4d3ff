"""Generator for notebooks/solutions/08_dpo.ipynb."""

from solbuild import Exercise, build

EXERCISES = [
    Exercise("1. Sequence log-probs", "check_sequence_logps", "sequence_logps", r'''
def sequence_logps(logits, input_ids, completion_mask):
    logp = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (logp * completion_mask[:, 1:]).sum(dim=1)
'''),
    Exercise("2. The sigmoid DPO loss", "check_dpo_loss", "dpo", r'''
def dpo(chosen, rejected, ref_chosen, ref_rejected, beta):
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    return -F.logsigmoid(beta * margin)
'''),
    Exercise("3. IPO's loss", "check_ipo_loss", "ipo", r'''
def ipo(chosen, rejected, ref_chosen, ref_rejected, beta, chosen_lengths, rejected_lengths):
    h = (chosen - ref_chosen) / chosen_lengths - (rejected - ref_rejected) / rejected_lengths
    return (h - 1 / (2 * beta)) ** 2
'''),
]

if __name__ == "__main__":
    print(build("08_dpo.ipynb", "Lesson 08, DPO", EXERCISES))
