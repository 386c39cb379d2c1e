"""pod-cycle library: everything the Invoke tasks call, importable and testable without Invoke.

Keep this package's import cheap: heavy modules (requests, fabric, paramiko, torch) are imported
inside the functions that need them so `inv --list` stays fast.
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
__version__ = "0.1.0"
