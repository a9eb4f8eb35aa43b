"""asv suites. They measure the kernelsuite of the checkout they live in, whatever copy is
installed: asv runs them with the Python it was started from (environment "existing") and
does not pass PYTHONPATH on, so ci/asv_compare.sh could otherwise time the same code at
both commits."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
