"""Gather the per-run JSON and logs a GPU script left in $OUT/r/ into $OUT/<name>.json and
$OUT/logs.txt, then print the logs (without warnings). Usage: python3 gather.py NAME"""
import glob
import json
import os
import shutil
import sys

out = os.environ["OUT"]
recs = []
for f in sorted(glob.glob(f"{out}/r/*.json")):
    with open(f) as fh:
        recs += json.load(fh)
with open(f"{out}/{sys.argv[1]}.json", "w") as fh:
    json.dump(recs, fh, indent=1)
logs = []
for f in sorted(glob.glob(f"{out}/r/*.log")):
    with open(f) as fh:
        logs += [line for line in fh if "Warning" not in line]
with open(f"{out}/logs.txt", "w") as fh:
    fh.writelines(logs)
shutil.rmtree(f"{out}/r")
print("".join(logs), end="")
