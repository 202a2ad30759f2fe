"""`python -m srnode …`, the same as the `srnode` console script."""
import sys

from srnode.cli import main

sys.exit(main())
