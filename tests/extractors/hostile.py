"""Hostile command extractors for the isolation tests: python3 hostile.py MODE INPUT OUTPUT."""

import os
import subprocess
import sys
import time

mode, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]

if mode == "memory":
    hog = bytearray(4 * 1024 ** 3)  # 4 GiB, past the connector's memory limit
elif mode == "loop":
    while True:
        pass
elif mode == "grandchild":
    # A grandchild that outlives the extractor; its pid goes where the test looks.
    p = subprocess.Popen(["sleep", "1000"])
    with open(os.environ["PID_FILE"], "w") as f:
        f.write(f"{p.pid} {os.getpgid(0)}")
    with open(dst, "w") as f:
        f.write('[{"Account": "1", "Amount": 1}]')
elif mode == "slow":
    # Runs until killed, with a grandchild; both ids go where the test looks.
    p = subprocess.Popen(["sleep", "1000"])
    with open(os.environ["PID_FILE"], "w") as f:
        f.write(f"{p.pid} {os.getpgid(0)}")
    while True:
        time.sleep(1)
elif mode == "env":
    # What the extractor sees: its environment, working directory, stdin.
    import json
    with open(os.environ["REPORT_FILE"], "w") as f:
        json.dump({"env": sorted(os.environ), "home": os.environ.get("HOME"), "cwd": os.getcwd(),
                   "stdin": os.path.realpath("/proc/self/fd/0"), "input": src}, f)
    with open(dst, "w") as f:
        f.write('[{"Account": "1", "Amount": -31007.2}]')
elif mode == "stdout":
    chunk = "x" * (1 << 20)
    for _ in range(2048):  # 2 GiB of chatter
        sys.stdout.write(chunk)
elif mode == "garbage":
    with open(dst, "w") as f:
        f.write("Traceback? no: this is not JSON")
elif mode == "abort":
    os.abort()  # SIGABRT
elif mode == "fail":
    print("cannot read the export: sheet 'Buchungen' missing", file=sys.stderr)
    sys.exit(1)
