"""Splitting an event file into the batches the peers read, and pacing them.

  files.py split FILE DIR LINES     DIR/part-NNNNNN.jsonl of LINES lines each, with
                                    modification times one second apart, in order (a
                                    Spark file stream takes files oldest first)
  files.py pace SRC DST RATE LOG    copies SRC's parts into DST at RATE lines/s (each
                                    file when it is due, written under a temporary name
                                    and renamed), appending "name wall-clock-seconds" to
                                    LOG as each appears
"""

import os
import sys
import time


def split(path, out_dir, lines_per_part):
    os.makedirs(out_dir, exist_ok=True)
    base = time.time() - 1_000_000
    part, count, out = 0, 0, None
    names = []
    with open(path, "rb") as f:
        for line in f:
            if out is None:
                name = "part-%06d.jsonl" % part
                names.append(name)
                out = open(os.path.join(out_dir, name), "wb")
            out.write(line)
            count += 1
            if count == lines_per_part:
                out.close()
                out, count, part = None, 0, part + 1
    if out is not None:
        out.close()
    for i, name in enumerate(names):
        os.utime(os.path.join(out_dir, name), (base + i, base + i))
    print(len(names))


def pace(src, dst, rate, log):
    os.makedirs(dst, exist_ok=True)
    start = time.time()
    sent = 0
    with open(log, "a") as log_file:
        for name in sorted(os.listdir(src)):
            with open(os.path.join(src, name), "rb") as f:
                data = f.read()
            due = start + sent / rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            tmp = os.path.join(dst, "." + name + ".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, os.path.join(dst, name))
            log_file.write("%s %.6f\n" % (name, time.time()))
            log_file.flush()
            sent += data.count(b"\n")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "split":
        split(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) == 6 and sys.argv[1] == "pace":
        pace(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5])
    else:
        sys.exit(__doc__)
