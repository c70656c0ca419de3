"""Text that reaches a terminal: control characters never travel raw.

Strings from outside (file names, checkpoint metadata, sidecars) can hold ESC sequences that
repaint a terminal, ``\\r``/``\\b`` that hide what precedes them, NUL, or bidirectional overrides
that reorder what is shown. :func:`safe_text` escapes them (``\\x1b``, ``\\r``, ``\\u202e``) so the
text reads as what it is. The command line applies it to every error line and, through
:func:`install_safe_log_records`, to every log record (whatever handler shows it: tqdm's
logging redirection swaps handlers, so a handler filter alone would be bypassed); table formatters escape their own specials on top
(:mod:`robustmaxup.certify.analysis`).

Example::

    safe_text("run\\x1b[2J.tsv")        # 'run\\\\x1b[2J.tsv'
    safe_text("a\\nb", keep="\\n")       # 'a\\nb' (newline kept)
"""

from __future__ import annotations

import logging
import re

# C0 controls, DEL, C1 controls, the Unicode format characters that reorder or hide text
# (bidirectional embeddings/overrides/isolates, zero-width marks, the BOM), and lone surrogates
# (undecodable bytes of a file name, which no UTF-8 stream can print)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]")


def _escape(ch: str) -> str:
    code = ord(ch)
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch) or (
        f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def safe_text(text: object, *, keep: str = "") -> str:
    """``str(text)`` with every control or text-reordering character escaped, except those in
    ``keep`` (e.g. ``"\\n"`` for multi-line text the caller produced itself)."""
    s = str(text)
    return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _escape(m.group()), s)


class SafeLogFilter(logging.Filter):
    """Formats each record's message once and escapes control characters in it (tabs kept),
    so a log line stays one line whatever strings it quotes."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logged as given
            return True
        record.msg, record.args = safe_text(message, keep="\t"), None
        return True


def install_safe_log_records() -> None:
    """Make every log record of this process escape its message (once; idempotent): the record
    factory formats and escapes it as :class:`SafeLogFilter` does."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "robustmaxup_safe", False):
        return
    escape = SafeLogFilter()

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        escape.filter(record)
        return record

    factory.robustmaxup_safe = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def error_summary(error: BaseException, limit: int = 240) -> str:
    """An exception's message on one line for an error line: its non-empty lines joined, runs
    of spaces collapsed, control characters escaped, cut at ``limit`` characters with ``…``
    (the type's name for an empty message). Torch puts the cause on the second line
    (``Error(s) in loading state_dict for Net:`` / ``Missing key(s) ...``): it is kept."""
    text = " ".join(" ".join(line.split()) for line in str(error).splitlines() if line.strip())
    if not text:
        return type(error).__name__
    text = safe_text(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


_WARNED: set[str] = set()


def warn_once(logger: logging.Logger, message: str) -> None:
    """``logger.warning(message)`` the first time this process sees ``message``, never again: for
    warnings raised per chunk or per batch that say the same thing each time."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning("%s", message)
