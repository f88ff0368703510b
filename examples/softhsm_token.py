"""Create a SoftHSM2 token whose user PIN is read from a file.

softhsm2-util takes PINs as command-line arguments, which any user on the
machine can read in the process list, or else prompts for them on a terminal.
This script runs softhsm2-util on a pseudo-terminal and answers its prompts, so
no PIN appears in any command line. The security officer PIN is random and not
kept, because the examples never need it again.

Usage: python examples/softhsm_token.py LABEL PIN_FILE
"""

from __future__ import annotations

import os
import pty
import re
import secrets
import sys
from pathlib import Path

# softhsm2-util 2.6 prompts "Please enter SO PIN: ", then "Please reenter SO PIN: ",
# and the same twice for the user PIN.
_PROMPT = re.compile(rb"Please (?:re)?enter (SO|user) PIN: $")


def main(arguments: list[str]) -> int:
    if len(arguments) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    label, pin_file = arguments
    pin = Path(pin_file).read_text(encoding="utf-8").strip()
    answers = {b"SO": secrets.token_urlsafe(18), b"user": pin}

    pid, terminal = pty.fork()
    if pid == 0:
        command = ["softhsm2-util", "--init-token", "--free", "--label", label]
        os.execvp(command[0], command)  # noqa: S606 - a fixed command, no shell.

    output = b""
    while True:
        try:
            data = os.read(terminal, 1024)
        except OSError:
            # Linux reports the end of a pseudo-terminal's output as EIO.
            break
        if not data:
            break
        output += data
        prompt = _PROMPT.search(output)
        if prompt is not None:
            os.write(terminal, answers[prompt[1]].encode() + b"\n")
            output = b""
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        # What softhsm2-util printed after the last prompt gives the reason. It has
        # no PIN, because the terminal does not echo them.
        message = output.decode(errors="replace").strip()
        print(
            f"softhsm2-util failed with exit status {code}: {message}", file=sys.stderr
        )
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
