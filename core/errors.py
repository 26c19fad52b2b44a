"""One clear line for what a user got wrong: ``error: <what, and the fix>``, exit code 2; and
for what the machine lacks (a full disk): ``error: ...``, exit code 1 (`environment_message`).

The project's own checks raise ValueError / FileNotFoundError / ... with a message that names
the problem and the fix; jsonargparse wraps them (a class's ``__init__`` failing inside a
Union type becomes "Does not validate against any of the Union subtypes" with the real
message as a bullet). `user_message` walks the exception chain back to the message that says
what is wrong, keeping the parser's "Parser key ..." prefix where it adds the option's name.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from argparse import ArgumentError
from collections.abc import Callable
from pathlib import Path

import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    KeyError,
    OSError,  # FileNotFoundError, NotADirectoryError, a model that cannot be loaded
    yaml.YAMLError,
    MisconfigurationException,  # Lightning's own checks of the trainer options
)
# The fix, for Lightning messages that name only the problem.
FIXES = {
    "No supported gpu backend found": "this machine has no usable GPU; pass "
    "--trainer.accelerator cpu (or auto), or install a CUDA build of torch",
    "GPUAccelerator can not run on your system": "this machine has no usable GPU; pass "
    "--trainer.accelerator cpu (or auto)",
    "Option 'adapter' is not accepted": "adapter (dora, loha, lokr) is an option of the LoRA "
    "baseline: train with configs/lora.yaml (models.LoRA)",
}
# The parser reports a bad option value as a TypeError inside its ArgumentError.
PARSER_ERRORS: tuple[type[BaseException], ...] = (ArgumentError, TypeError)
_UNION_DUMP = "Does not validate against any of the Union subtypes"


def exception_chain(error: BaseException) -> list[BaseException]:
    """The error, then what caused it, ... (outermost first)."""
    chain: list[BaseException] = []
    while error is not None and all(error is not seen for seen in chain):
        chain.append(error)
        # ``raise ... from None``: the message already says everything; stop there.
        implicit = None if error.__suppress_context__ else error.__context__
        error = error.__cause__ or implicit  # type: ignore[assignment]
    return chain


def _text(error: BaseException) -> str:
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return str(message).strip()


def _union_reason(error: BaseException) -> str | None:
    """The one bullet of a Union dump that is not a type mismatch: the message of the class
    that did match the value but refused it (``Expected a <class 'str'>`` is the other)."""
    text = _text(error)
    if _UNION_DUMP not in text or "\nErrors:\n" not in text:
        return None
    listed = text.split("\nErrors:\n", 1)[1].split("\nGiven value", 1)[0]
    bullets = [b.strip() for b in listed.split("\n  - ") if b.strip()]
    reasons = [b.removeprefix("- ") for b in bullets]
    reasons = [r for r in reasons if not r.startswith("Expected a ")]
    if len(reasons) != 1:
        return None
    # "Problem with given class_path '...':" then, indented, what the class said
    head, _, said = reasons[0].partition(":\n")
    return said.strip() if head.startswith("Problem with given class_path") and said else reasons[0]


def user_message(error: BaseException, config_files: list[str] | None = None) -> str | None:
    """The one-line message for a user error, or None when it is not one (a bug: traceback)."""
    links = exception_chain(error)
    from_parser = any(isinstance(e, ArgumentError) for e in links)
    kinds = USER_ERRORS + (PARSER_ERRORS if from_parser else ())
    chain = [e for e in links if isinstance(e, kinds) and _text(e)]
    if not chain:
        return None
    reason = next((r for r in map(_union_reason, chain) if r), None)
    message = reason or _text(chain[-1])  # else the innermost: what actually went wrong
    for outer in reversed(chain[:-1]):  # outward while the wrapper only adds context
        text = _text(outer)
        if message in text and _UNION_DUMP not in text and len(text) < len(message) + 200:
            message = text
        else:
            break
    if isinstance(chain[-1], yaml.YAMLError) or "Problems parsing config" in message:
        bad = next((f for f in config_files or [] if not _parses(f)), None)
        if bad is not None:
            message = f"config file {bad} is not valid YAML: {message}; fix its syntax"
    fix = next((fix for known, fix in FIXES.items() if known in message), None)
    if fix is not None:
        message = f"{message.rstrip('.!')}: {fix}."
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


# The environment, not the input: the same command succeeds where the disk has room.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXTS = ("No space left on device", "StorageFull", "Disk quota exceeded")


def environment_message(error: BaseException) -> str | None:
    """The one-line message for an error of the machine (a full disk: exit code 1), or None.

    safetensors reports a full disk as its own SafetensorError ("IoError(Os { code: 28, kind:
    StorageFull, ... })"), Python as an OSError with errno ENOSPC (and the file's name)."""
    for link in exception_chain(error):
        full = isinstance(link, OSError) and link.errno in DISK_FULL_ERRNOS
        if full or any(text in str(link) for text in DISK_FULL_TEXTS):
            file = getattr(link, "filename", None)
            where = f" writing {file}" if file else ""
            return (
                f"no space left on device{where}; free space or point "
                "trainer.default_root_dir (or PERSONALIZE_CACHE) at a disk with room; resume "
                "from the last checkpoint (--ckpt_path <run>/checkpoints/last.ckpt)."
            )
    return None


def read_utf8_text(path: str | Path) -> str:
    """A user's text file (prompts, captions) as UTF-8 (a byte-order mark is skipped); other
    bytes are a ValueError naming the file, the line and the byte, and the fix."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        start = data.rfind(b"\n", 0, error.start) + 1
        column = len(data[start : error.start].decode("utf-8", errors="replace")) + 1
        raise ValueError(
            f"{path} is not UTF-8 text: byte 0x{data[error.start]:02x} at line {line}, column "
            f"{column} cannot be decoded; save the file as UTF-8 (an editor's 'Save with "
            "encoding', or iconv -f latin1 -t utf-8)."
        ) from None


def _parses(path: str) -> bool:
    try:
        yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return True


def config_files(argv: list[str]) -> list[str]:
    """The ``--config`` files of a command line, in order."""
    files = []
    for index, arg in enumerate(argv):
        if arg == "--config" and index + 1 < len(argv):
            files.append(argv[index + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def run_command(action: Callable[[list[str]], str], argv: list[str]) -> int:
    """A script's ``main``: ``action(argv)`` (``--debug`` taken out), its result line printed,
    exit 0; what the user can fix one ``error: ...`` line, exit 2; anything else its
    traceback, exit 1. ``--debug`` or PERSONALIZE_DEBUG shows every traceback."""
    debug = "--debug" in argv or os.environ.get("PERSONALIZE_DEBUG", "") not in ("", "0")
    try:
        line = action([a for a in argv if a != "--debug"])
    except Exception as error:
        message = None if debug else user_message(error)
        if message is None:
            traceback.print_exc()
            return 1
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(line)
    return 0
