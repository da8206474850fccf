"""A release document as a Slack message (``FANOUT_NOTIFY_FORMAT=slack``): an incoming
webhook's ``{"text": ..., "blocks": [...]}``.

``text`` is the one-line summary Slack shows in notifications; the blocks say the source, the
outcome, and each destination's state and error. Slack's limits are kept: a section's text
under 3,000 characters, a message under 50 blocks (destinations past that are counted, not
listed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_SECTION_MAX = 2900
_MAX_SECTIONS = 45
_ERROR_MAX = 200
_ICONS = {"succeeded": ":white_check_mark:", "failed": ":x:"}


def slack_message(document: Mapping[str, Any]) -> dict[str, Any]:
    """The Slack body summarising a release document (as ``release_document`` builds it)."""
    release_id = str(document.get("id", "?"))
    source = str(document.get("source", "?"))
    destinations = document.get("destinations") or {}
    records = [r for r in destinations.values() if isinstance(r, Mapping)]
    failed = sum(1 for r in records if r.get("state") == "failed")
    if document.get("ok"):
        outcome = f"succeeded: {len(records)} of {len(records)} destinations"
        if failed:
            outcome += f" ({failed} optional failed)"
        head = f":white_check_mark: Release {release_id} succeeded"
    else:
        outcome = f"failed: {failed} of {len(records)} destinations failed"
        head = f":x: Release {release_id} failed"
    text = f"fanout: release {release_id} of {source} {outcome}"
    blocks: list[dict[str, Any]] = [
        _section(f"*{_escape(head)}*\nSource: `{_escape(source)}`\n{_escape(outcome)}"),
    ]
    lines = [_line(r) for r in records]
    sections = _pack(lines)
    blocks.extend(_section(s) for s in sections)
    listed = sum(s.count("\n") + 1 for s in sections)
    if len(lines) > listed:
        blocks.append(_context(f"… and {len(lines) - listed} more destinations "
                               f"(`fanout status {_escape(release_id)}`)"))
    blocks.append(_context(f"digest `{_escape(str(document.get('digest', '')))}` · "
                           f"exit code {document.get('exit_code', '?')}"))
    return {"text": text, "blocks": blocks}


def _line(record: Mapping[str, Any]) -> str:
    state = str(record.get("state", "?"))
    line = (f"{_ICONS.get(state, ':hourglass_flowing_sand:')} "
            f"`{_escape(str(record.get('destination', '?')))}` {state}")
    if record.get("optional"):
        line += " (optional)"
    attempts = record.get("attempts")
    if isinstance(attempts, int) and attempts > 1:
        line += f" after {attempts} attempts"
    error = record.get("last_error")
    if state == "failed" and error:
        error = str(error)
        if len(error) > _ERROR_MAX:
            error = error[: _ERROR_MAX - 1] + "…"
        line += f": {_escape(error)}"
    return line


def _pack(lines: list[str]) -> list[str]:
    """Lines joined into as few sections as Slack's limits allow, up to ``_MAX_SECTIONS``."""
    sections: list[str] = []
    for line in lines:
        line = line[:_SECTION_MAX]
        if sections and len(sections[-1]) + 1 + len(line) <= _SECTION_MAX:
            sections[-1] += "\n" + line
        elif len(sections) < _MAX_SECTIONS:
            sections.append(line)
        else:
            break
    return sections


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _escape(text: str) -> str:
    # Slack's mrkdwn reads <...> as links and mentions: a registry's error must stay text.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mirror_slack_message(document: Mapping[str, Any]) -> dict[str, Any]:
    """The Slack body of a mirror's alert (``workers/mirror_alerts.py`` builds the document)."""
    name = str(document.get("mirror", "?"))
    source = str(document.get("source", "?"))
    if document.get("event") == "mirror.recovered":
        head = f":white_check_mark: Mirror {name} is in sync again"
        text = f"fanout: mirror {name} of {source} recovered"
    else:
        head = f":x: Mirror {name} has been failing for {document.get('failing_for', '?')}"
        text = f"fanout: mirror {name} of {source} failing"
    lines = [f"*{_escape(head)}*", f"Source: `{_escape(source)}`"]
    error = document.get("error")
    if error:
        error = str(error)
        if len(error) > _ERROR_MAX:
            error = error[: _ERROR_MAX - 1] + "…"
        lines.append(f"Last error: {_escape(error)}")
    return {"text": text, "blocks": [_section("\n".join(lines)[:_SECTION_MAX]),
                                     _context(f"`fanout sync {_escape(name)} --dry-run`")]}
