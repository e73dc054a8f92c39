"""What the check scripts in tests/py share."""
import os
import sys


def missing(what, why):
    """A check whose module is missing: skipped with the reason, or, under CI=true (where
    .ci/run installs every module), a failure."""
    if os.environ.get("CI") == "true":
        print("%s: FAILED: %s; CI=true needs it (.ci/run installs it)" % (what, why))
        sys.exit(1)
    print("%s: skipped: %s" % (what, why))
