import sys

from include.bench.benchmark import main

sys.exit(main())
