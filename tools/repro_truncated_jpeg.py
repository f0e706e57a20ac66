"""Reproduce MindSpore's decoder crash on truncated JPEGs (for the fault table in the README and an upstream
bug report): cut a JPEG at several points and decode each cut with ``mindspore.dataset.vision.Decode`` in its
own process; a negative exit code is a crash by signal (-8 = SIGFPE), an exception is a clean error.

    python -m tools.repro_truncated_jpeg                # 20, 64 and 224 px images, 12 cut points each
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

DECODE = ("import sys, numpy as np, mindspore.dataset.vision as V\n"
          "try:\n    V.Decode()(np.fromfile(sys.argv[1], np.uint8))\nexcept Exception:\n    sys.exit(3)\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20,64,224")
    parser.add_argument("--cuts", type=int, default=12)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="truncated_jpeg_")
    print("| image | JPEG bytes | cut points | decoded | clean error | crashed (signal) |")
    print("|---|---|---|---|---|---|")
    for size in map(int, args.sizes.split(",")):
        y, x = np.mgrid[0:size, 0:size]
        img = np.dstack([x * 255 // size, y * 255 // size, (x + y) * 127 // size]).astype(np.uint8)
        full = os.path.join(folder, f"{size}.jpg")
        Image.fromarray(img).save(full, quality=90)
        data = open(full, "rb").read()
        outcome = {"ok": 0, "error": 0, "crash": []}
        for frac in np.linspace(0.05, 0.98, args.cuts):
            cut = os.path.join(folder, "cut.jpg")
            with open(cut, "wb") as f:
                f.write(data[: int(len(data) * frac)])
            code = subprocess.run([sys.executable, "-c", DECODE, cut], capture_output=True).returncode
            if code == 0:
                outcome["ok"] += 1
            elif code == 3:
                outcome["error"] += 1
            else:
                outcome["crash"].append(code)
        crashes = outcome["crash"]
        print(f"| {size}x{size} gradient | {len(data)} | {args.cuts} | {outcome['ok']} | {outcome['error']} | "
              f"{len(crashes)}{' (' + ', '.join(sorted({str(c) for c in crashes})) + ')' if crashes else ''} |",
              flush=True)


if __name__ == "__main__":
    main()
