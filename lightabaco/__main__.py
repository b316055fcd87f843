"""`python -m lightabaco` is the `lightabaco` command."""

import sys

from lightabaco.cli import main

sys.exit(main())
