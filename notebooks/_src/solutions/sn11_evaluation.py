"""Generator for notebooks/solutions/11_evaluation.ipynb."""

from solbuild import Exercise, build

EXERCISES = [
    Exercise("1. acc and acc_norm", "check_choice_metrics", "metrics", r'''
def metrics(lls, choices, gold):
    def first_best(values):
        return max(range(len(values)), key=lambda i: (values[i], -i))

    per_char = [ll / len(c) for ll, c in zip(lls, choices)]
    return {"acc": float(first_best(lls) == gold), "acc_norm": float(first_best(per_char) == gold)}
'''),
    Exercise("2. Mean and standard error", "check_mean_stderr", "mean_and_stderr", r'''
def mean_and_stderr(values):
    n = len(values)
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)
'''),
]

if __name__ == "__main__":
    print(build("11_evaluation.ipynb", "Lesson 11, evaluation", EXERCISES))
