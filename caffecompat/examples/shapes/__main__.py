"""`python -m caffecompat.examples.shapes WORK_DIR`: the whole shapes example (see caffecompat.examples.shapes.run)."""

import sys

from caffecompat.examples.shapes.run import main

sys.exit(main())
