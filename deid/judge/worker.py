"""A judge worker process (:meth:`deid.judge.Judge.descriptors` with several workers):
reads pickled lists of face crops from stdin, writes their (N, 128) descriptors to stdout,
until stdin closes. Its parent is deid itself, over a private pipe."""

from __future__ import annotations

import os
import pickle
import sys

from deid.judge import load_judge


def main() -> None:
    stdin = sys.stdin.buffer
    # the pipe to the parent on a descriptor of its own; anything a library prints to
    # stdout goes to stderr instead of into the replies
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    while True:
        try:
            faces = pickle.load(stdin)
        except EOFError:
            return
        try:
            out = load_judge().descriptors(faces)
        except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
            out = e
        pickle.dump(out, stdout, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.flush()


if __name__ == "__main__":
    main()
