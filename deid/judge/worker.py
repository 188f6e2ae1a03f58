"""A judge worker process (:meth:`deid.judge.Judge.descriptors` with several workers):
reads pickled lists of face crops from stdin, writes their (N, 128) descriptors to stdout,
until stdin closes. Its parent is deid itself, over a private pipe."""

from __future__ import annotations

import pickle
import sys

from deid.judge import load_judge


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
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
