"""``python -m eclipse``: the command line."""
from .cli import main

raise SystemExit(main())
