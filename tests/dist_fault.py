"""``tl-multilingual`` for torchrun in the tests, with an optional fault: the rank
``--kill-rank`` kills itself (SIGKILL, as the kernel's OOM killer would) when the
study reaches the step ``--kill-at``."""

from __future__ import annotations

import os
import signal
import sys


def main() -> int:
    args = sys.argv[1:]
    kill_rank = next((a.split("=", 1)[1] for a in args if a.startswith("--kill-rank=")), None)
    kill_at = next((a.split("=", 1)[1] for a in args if a.startswith("--kill-at=")), None)
    args = [a for a in args if not a.startswith(("--kill-rank=", "--kill-at="))]
    if kill_rank is not None and os.environ.get("RANK") == kill_rank:
        from tl_multilingual.study import steps as study

        steps = {"deactivation": "deactivation_matrix", "sharing": "sharing", "lens": "language_lens"}
        name = steps[kill_at]

        def die(*_, **__):
            os.kill(os.getpid(), signal.SIGKILL)

        setattr(study, name, die)
    from tl_multilingual.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
