"""``python -m reversehttp_gateway.client``: the ``reversehttp`` command."""

import sys

from .cli import main

sys.exit(main())
