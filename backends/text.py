"""Pure text bookkeeping the backends share: new text in a stream, and offsets into it."""

from __future__ import annotations


def unseen_text(streamed: str, answer_text: str) -> str:
    """The part of ``answer_text`` not yet in ``streamed``.

    An upstream may send each piece on its own (a delta) or the whole answer so far
    (cumulative); ``answer_text`` that starts with everything streamed is taken as
    cumulative, and anything else as the next piece. A repeat of the whole answer adds nothing.
    """
    if answer_text.startswith(streamed):
        return answer_text[len(streamed) :]
    return answer_text


def char_index(encoded: bytes, byte_index: int) -> int:
    """The character offset in a text of the UTF-8 ``byte_index`` into its ``encoded`` form.

    Offsets past the end give the text's length; one inside a character rounds down to it.
    """
    return len(encoded[: max(byte_index, 0)].decode("utf-8", errors="ignore"))
