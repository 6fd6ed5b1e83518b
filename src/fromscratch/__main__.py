import sys

from fromscratch.cli import main

sys.exit(main())
