"""`python -m regcache` runs the command line."""

from regcache.cli import main

raise SystemExit(main())
