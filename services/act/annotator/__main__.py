"""`python -m act.annotator`: serve the annotator with settings from `ACT_*` variables."""

import sys

from act.serving.server import run

if __name__ == "__main__":
    sys.exit(run("annotator"))
