"""Print, per CPU setting, the worst ratio of our float32 error to the reference's (tests/conftest.py writes one
JSON line per check to $DOGE_CHECKS_JSON). Usage: python .ci/worst_ratios.py .ci/checks-*.jsonl"""

import json
import sys
from pathlib import Path

rows = []
for path in sys.argv[1:]:
    checks = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if checks:
        worst = max(checks, key=lambda c: c["ratio"])
        rows.append((Path(path).stem.removeprefix("checks-"), len(checks), worst["ratio"], worst["name"]))
width = max((len(r[0]) for r in rows), default=7)
print(f"{'setting'.ljust(width)}  checks  worst ratio  (bound 4)  where")
for setting, n, ratio, name in rows:
    print(f"{setting.ljust(width)}  {n:6d}  {ratio:11.2f}              {name}")
print(json.dumps({"worst_ratio": max((r[2] for r in rows), default=None), "settings": {r[0]: r[2] for r in rows}}))
