"""``python -m restorelcc``: the ``restorelcc`` command, run as its console script
(``[project.scripts]`` in pyproject.toml) runs it."""

import sys

from restorelcc.cli import main

if __name__ == "__main__":
    sys.exit(main())
