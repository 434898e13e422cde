"""`python -m broker.cli` is `fogmesh`."""

import sys

from broker.cli.main import main

sys.exit(main())
