"""``miss-chat`` and attachments (SPEC §16): ``save ID DIR``, and what
``send --attach FILE…`` shows while it uploads.

``send RECIPIENT [TEXT] --attach FILE…`` attaches up to the hub's limit of
files (6 by default; JPEG, PNG, HEIC/HEIF images or PDF, 20 Mo each by
default); the text may then be left out. Files are refused before
anything is uploaded, with the reason in French (``trop de pièces
jointes``, ``… est trop volumineux``, ``type de fichier non accepté``).
On a terminal, the upload's progress is shown on stderr.

``history`` and ``inbox`` show each attachment under its message
(``📎 plaie.jpg — 1,2 Mo, image JPEG``) and the message's id in brackets;
In ``chat``, ``/joindre FICHIER…`` (or ``/attach``) sends files to the
conversation (quote names with spaces: ``/joindre "compte rendu.pdf"``).


``save ID DIR`` fetches that message's attachments, checks them and
writes them into DIR (``plaie (2).jpg`` if ``plaie.jpg`` exists), printing
each path. An attachment whose bytes do not verify is not written:
``pièce jointe altérée : plaie.jpg (non enregistrée)``, exit status 1.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from protocol.errors import ProtocolError

from .attachments import check_local_file
from .cli_common import PROG, UsageError, connected, describe
from .client import Client
from .errors import ClientError, UnknownMessage
from .models import now_ms, parse_id
from .render import Names, outgoing_line, with_attachments

__all__ = ["ProgressLine", "chat_attach", "check_attach_args", "cmd_save"]

#: What ``/joindre`` without files says.
ATTACH_USAGE = "/joindre FICHIER… : les fichiers à envoyer (images JPEG, PNG, HEIC ou documents PDF)"


class ProgressLine:
    """``envoi de plaie.jpg : 45 %`` on stderr, rewritten in place, when
    stderr is a terminal (nothing otherwise)."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._last: tuple[str, int] | None = None

    def __call__(self, name: str, have: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        percent = have * 100 // total
        if self._last == (name, percent):
            return
        self._last = (name, percent)
        end = "\n" if have >= total else ""
        print(f"\r{PROG}: envoi de {name} : {percent} %", end=end, file=sys.stderr, flush=True)


def check_attach_args(files: list[str] | None) -> list[str]:
    """The ``--attach`` files, each one that exists and reads as an
    accepted type (checked again, with the hub's limits, by the SDK);
    UsageError for one that does not, before the passphrase is asked."""
    out = []
    for name in files or []:
        problem = check_local_file(Path(name))
        if problem is not None:
            raise UsageError(problem)
        out.append(name)
    return out


async def chat_attach(client: Client, to: str, arg: str, names: Names) -> tuple[bool, str]:
    """``/joindre FICHIER…`` in a chat: send the files to ``to`` (no text).
    Returns ``(True, the line of the message sent)`` or ``(False, why
    not)`` (French); a lost connection leaves it pending, as any message."""
    try:
        files = check_attach_args(shlex.split(arg))
    except ValueError as exc:  # unbalanced quotes
        return False, f"{ATTACH_USAGE} ({exc})"
    except UsageError as exc:
        return False, f"non envoyé : {exc}"
    if not files:
        return False, ATTACH_USAGE
    try:
        message_id = await client.send(to, "", attachments=files, on_progress=ProgressLine())
    except (ProtocolError, ClientError, OSError) as exc:
        return False, f"non envoyé : {describe(exc)}"
    entry = client.state.get_message(client.user_id, message_id)
    atts = entry.attachments if entry is not None else ()
    sent_at = entry.sent_at if entry is not None else now_ms()
    return True, with_attachments(outgoing_line(sent_at, to, "", names), atts)


async def cmd_save(args: argparse.Namespace) -> int:
    try:
        message_id = parse_id(args.id)
    except ValueError:
        raise UsageError(
            f"{args.id!r} n'est pas un identifiant de message (tel que `history` l'affiche)"
        ) from None
    directory = Path(args.directory)
    if not os.path.isdir(directory):  # noqa: ASYNC240 - before connecting: nothing else runs yet
        raise UsageError(f"{directory} n'est pas un dossier")
    async with connected(args) as client:
        entry = client.state.find_message(message_id)
        if entry is None:
            raise UnknownMessage("aucun message avec cet identifiant sur cet appareil")
        if not entry.attachments:
            raise UsageError("ce message n'a pas de pièce jointe")
        count = len(entry.attachments)
        if args.index is not None and not 1 <= args.index <= count:
            raise UsageError(f"ce message a {count} pièce(s) jointe(s)")
        for index in range(count) if args.index is None else [args.index - 1]:
            # One at a time: what was saved is printed even if a later one fails.
            for path in await client.save(message_id, directory, index):
                print(path, flush=True)
    return 0
