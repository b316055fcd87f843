"""`python -m lightabaco` is the `lightabaco` command."""

import sys

from lightabaco.cli.commands import main

sys.exit(main())
