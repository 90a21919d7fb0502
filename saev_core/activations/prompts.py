"""Chat-format conversations, the one shape every stage hands to a processor's chat template."""

from __future__ import annotations


def conversation(question: str, response: str | None = None, with_image: bool = True) -> list[dict]:
    """A user turn (image placeholder + question) and, if given, the assistant's response."""
    content = [{"type": "image"}] if with_image else []
    conv = [{"role": "user", "content": [*content, {"type": "text", "text": question}]}]
    if response is not None:
        conv.append({"role": "assistant", "content": [{"type": "text", "text": response}]})
    return conv
