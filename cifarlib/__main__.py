import sys

from cifarlib.cli import main

sys.exit(main())
