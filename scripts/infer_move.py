#!/usr/bin/env python3
"""Print the model's move for a position: always a legal move.

    python scripts/infer_move.py --model PATH --fen FEN [--top-k K] [--json]

The same as `python -m chessbot.infer`; chessbot must be importable (the project installed,
as `make setup` does, or PYTHONPATH at the checkout, as the pod image sets).
"""

import sys

from chessbot.infer import main

if __name__ == "__main__":
    sys.exit(main())
