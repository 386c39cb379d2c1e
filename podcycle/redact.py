"""Keep secrets out of every string the tool prints, logs or raises, and terminal control
characters out of what it shows from elsewhere.

Any code that learns a secret calls `register_secret`; `redact` then replaces it wherever it
appears. A logging filter applies the same to every record of the `podcycle` loggers.
`printable` writes the control characters of a text from outside (a name on the RunPod
account, an API's error) as visible escapes before a terminal gets it.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

_lock = threading.Lock()
_secrets: set[str] = set()
MASK = "****"
# A long secret echoed cut short ("invalid key rpa_A1B2C3D4E5F6G7H8..." from a server that
# cuts what it echoes, a line a proxy cut) left all it showed in clear: only whole forms were
# masked. A run of FRAGMENT characters or more of a secret of LONG or more is masked too: a
# random key shares no 16 characters with ordinary text, and the last 15 of it alone are
# far from the key.
FRAGMENT = 16
LONG = 24
TOKEN = re.compile(r"[A-Za-z0-9_.:+=-]+")  # a key or token: no path, no space
_long: set[str] = set()  # the long secrets, as given and without their kind's prefix
SHORT = 12  # a secret shorter than this is masked as typed and as a word of its own only
_short: dict[str, re.Pattern[str]] = {}
_windows: set[str] = set()  # each FRAGMENT-long piece of them


# C0 and C1 control characters: ESC starts the sequences that recolour, retitle, move the
# cursor or erase a terminal (C1's CSI 0x9b does too); a line break or carriage return forges
# a row of a table or a line of an error. Unicode's bidirectional controls reorder what a
# cell seems to say (`a\u202egnp.exe` shows as a...exe), and its line and paragraph
# separators break a line too.
# The directional marks (LRM, RLM, ALM) reorder nothing, and Hebrew or Arabic text uses them:
# a name may hold them (shown escaped all the same); the embeddings, overrides and isolates
# reorder what follows, and the separators break a line: a name may hold none of those.
_UNICODE_MARKS = "\u200e\u200f\u061c"
# ... and the characters that show as nothing at all (zero-width space, word joiner, the BOM
# as a zero-width no-break space): `a\u200bb` looked like `ab`, a name that was not `ab`.
_UNICODE_REORDER_OR_BREAK = "\u202a-\u202e\u2066-\u2069\u2028\u2029\u200b\u2060\ufeff"
_UNICODE_CONTROLS = _UNICODE_MARKS + _UNICODE_REORDER_OR_BREAK
# ... and the lone surrogates by which Python keeps bytes that are not text in the locale
# (a file's name, a command-line argument, under LC_ALL=C or Latin-1): no terminal or UTF-8
# file can take them, and writing one failed with UnicodeEncodeError (a run's report).
_SURROGATES = "\\ud800-\\udfff"
_CONTROL = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{_UNICODE_CONTROLS}{_SURROGATES}]")
_NAME_CONTROL = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{_UNICODE_REORDER_OR_BREAK}]")
_CONTROL_BUT_LINES = re.compile(
    f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f{_UNICODE_CONTROLS}{_SURROGATES}]")


def printable(text: object, *, lines: bool = False) -> str:
    """`text` with every control character written as a visible `\\xNN` (`\\uNNNN` past
    0xff; `lines`: line breaks and tabs kept, for a text of several lines: a message the
    tool composed, a log streamed from a pod, a report). A byte that is not text in the
    locale (a surrogate of Python's surrogateescape) is its `\\xNN`."""
    return (_CONTROL_BUT_LINES if lines else _CONTROL).sub(
        lambda found: escaped(found.group()), str(text))


def clipped(text: object, limit: int) -> str:
    """Text from elsewhere (an API's answer, a pod's file) cut to `limit` characters to be
    shown: every secret masked before the cut (cut first, a key split at the cut no longer
    matched its mask, and all of it but its tail was shown), then printable()."""
    return printable(redact(text)[:limit])


def escaped(text: str) -> str:
    """Every character of `text` as its escape: `\\xNN`, `\\uNNNN`, `\\UNNNNNNNN`; a lone
    surrogate of Python's surrogateescape as the byte it stands for."""
    shown = []
    for ch in text:
        code = ord(ch)
        if 0xdc80 <= code <= 0xdcff:
            code -= 0xdc00
        shown.append(f"\\x{code:02x}" if code <= 0xff else f"\\u{code:04x}" if code <= 0xffff
                     else f"\\U{code:08x}")
    return "".join(shown)


def has_control(text: str) -> bool:
    """Whether a name holds a character it must not: one printable() escapes (line breaks
    included), but for the directional marks."""
    return _NAME_CONTROL.search(text) is not None


def base64_forms(value: str) -> set[str]:
    """`value`'s base64 wherever it sits in an encoded text: an echoed `Authorization:
    Bearer KEY` or Basic `:KEY` puts it after other bytes, which shifts its encoding. At each
    of the three byte alignments, the characters that encode its bytes only (the groups it
    shares with what is around it dropped), and its own encoding whole."""
    import base64

    raw = value.encode("utf-8", "surrogateescape")
    forms = {base64.b64encode(raw).decode().rstrip("=")}
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        core = encoded[4 if offset else 0:(offset + len(raw)) // 3 * 4]
        if len(core) >= 8:
            forms.add(core)
    return forms


def without_kind(value: str) -> str | None:
    """A secret without its kind's prefix (`rpa_…` → `…`, `hf_…`), as a server or a paste
    may give it; None when it has no such prefix."""
    bare = re.fullmatch(r"[A-Za-z]{2,5}_(.{12,})", value)
    return bare.group(1) if bare else None


def holds_key(value: str, key: str | None, *, shortest: int = 8) -> bool:
    """Whether a value is, holds, or is a long piece of the RunPod key `key`: the key
    itself, the key without its `rpa_` prefix, a truncated paste of it, in any case."""
    key = (key or "").strip()
    if len(key) < shortest:
        return False
    lowered, piece = value.lower(), value.strip().lower()
    return any(form.lower() in lowered for form in (key, without_kind(key)) if form) \
        or (len(piece) >= 16 and piece in key.lower())


def register_secret(value: str | None) -> None:
    """Mask `value` from now on, and the forms a server may echo it in: without its kind's
    prefix (`rpa_…`, `hf_…`), in another case, in hex or %-escaped, and in base64 at any
    place (an Authorization header echoed encoded, Basic or Bearer). One shorter than SHORT
    (but 6 or more) is masked as typed where it stands as a word, and in its encoded forms."""
    if not value or len(value) < 6:
        return
    short = len(value) < SHORT
    forms: set[str] = set()
    # Without its prefix, each form again: a server may strip it and encode what is left.
    for secret in filter(None, (value, without_kind(value))):
        # surrogateescape: a value with a byte that is not UTF-8 (a Latin-1 password
        # exported in the shell) failed every task, pod.stop too, with a traceback.
        raw = secret.encode("utf-8", "surrogateescape")
        # As a server may echo it: hex, every byte %-escaped (a URL), base64; another case.
        forms |= {*base64_forms(secret), raw.hex(), raw.hex().upper(),
                  "".join(f"%{byte:02X}" for byte in raw),
                  "".join(f"%{byte:02x}" for byte in raw)}
        if not short:
            forms |= {secret, secret.lower(), secret.upper()}
    if short:
        # A short one (JUPYTER_PASSWORD=secure) in every case and inside any word masked
        # ordinary output: the cloud column, a STATUS of EXITED, "NVIDIA" in every GPU id,
        # even records written to disk. As typed, and as a word of its own (its encoded
        # forms, long and unlike words, anywhere).
        word = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(value)}(?![A-Za-z0-9_])")
        with _lock:
            _short[value] = word
    if forms:
        # Fragments of tokens only: a path held by a secret-looking variable
        # (HF_TOKEN_PATH=/home/me/.cache/huggingface/token) masked every path beside it.
        longs = {secret for secret in (value, without_kind(value))
                 if secret and len(secret) >= LONG and TOKEN.fullmatch(secret)}
        with _lock:
            _secrets.update(forms)
            _long.update(longs)
            _windows.update(secret[i:i + FRAGMENT] for secret in longs
                            for i in range(len(secret) - FRAGMENT + 1))


def holds_secret(text: str, *, shortest: int = 12) -> bool:
    """Whether `text` holds a registered secret (or echo form) of `shortest` characters or
    more, whatever the case (a key pasted where the tool lowercases it: a cloud, an image
    repository). A short one (a 6-letter password in the environment) would match ordinary
    names."""
    lowered = _without_hidden(text).lower()
    with _lock:
        return any(len(secret) >= shortest and secret.lower() in lowered
                   for secret in _secrets)


# What a server may put inside an echoed key that a terminal shows as nothing, or that
# printable() shows as an escape between the key's halves: control characters (C0, C1, DEL,
# a line break), format characters (zero-width space and joiners, direction controls, the
# soft hyphen, tag characters), line and paragraph separators, combining marks (variation
# selectors among them) and the Hangul fillers. Each secret is looked for in the text
# without them, and masked in the text itself, those characters with it.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Mn", "Me"})
_FILLERS = frozenset("\u115f\u1160\u3164\uffa0")


def _hidden(ch: str) -> bool:
    if ch < "\x80":
        return ch < " " or ch == "\x7f"
    import unicodedata

    return unicodedata.category(ch) in _HIDDEN_CATEGORIES or ch in _FILLERS


_ASCII_CONTROLS = {code: None for code in (*range(32), 127)}


def _without_hidden(text: str) -> str:
    """`text` without its hidden characters; the very object when it has none."""
    if text.isascii():
        return text if text.isprintable() else text.translate(_ASCII_CONTROLS)
    return "".join(ch for ch in text if not _hidden(ch))


def redact(text: object) -> str:
    result = str(text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in result:
            result = result.replace(secret, MASK)
    seen = _without_hidden(result)
    if seen is not result and any(secret in seen for secret in secrets):
        result = _mask_across_hidden(result, secrets)
    if _windows and len(result) >= FRAGMENT:
        result = _mask_fragments(result)
    with _lock:
        short = list(_short.items())
    for value, word in short:
        if value in result:
            result = word.sub(MASK, result)
    return result


def _mask_fragments(text: str) -> str:
    """`text` with each run of FRAGMENT or more characters of a long secret masked: the
    first window that is a piece of one starts the run (an earlier start would have been a
    window itself), which goes on for as long as it is still a piece of a secret."""
    with _lock:
        windows, longs = set(_windows), tuple(_long)
    parts, at, i, end = [], 0, 0, len(text) - FRAGMENT
    while i <= end:
        if text[i:i + FRAGMENT] not in windows:
            i += 1
            continue
        stop = i + FRAGMENT
        while stop < len(text) and any(text[i:stop + 1] in secret for secret in longs):
            stop += 1
        parts += [text[at:i], MASK]
        at = i = stop
    return "".join(parts) + text[at:] if parts else text


def _mask_across_hidden(text: str, secrets: list[str]) -> str:
    """`text` with each secret masked where hidden characters split it: found in the text
    without them, masked in the text itself, those characters included."""
    kept = [i for i, ch in enumerate(text) if not _hidden(ch)]
    seen = "".join(text[i] for i in kept)
    spans = []
    for secret in secrets:  # longest first
        start = seen.find(secret)
        while start != -1:
            spans.append((kept[start], kept[start + len(secret) - 1] + 1))
            start = seen.find(secret, start + len(secret))
    parts, at = [], 0
    for begin, end in sorted(spans):
        if end <= at:
            continue  # inside a span already masked
        parts.append(text[at:begin] if begin > at else "")
        parts.append(MASK if begin >= at else "")
        at = end
    parts.append(text[at:])
    return "".join(parts)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_logging_filter(logger_name: str = "") -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|PRIVATE_KEY|ACCESS_KEY|CREDENTIAL",
                         re.IGNORECASE)


# --api-key and the typos of it Invoke refuses after its --debug lines printed the value.
API_KEY_FLAG = re.compile(r"--api[-_]?k(?:e(?:y)?)?", re.IGNORECASE)


def register_command_line(argv: list[str]) -> None:
    """The secrets on `inv`'s own command line: the value of --api-key, and of each --env
    NAME=VALUE whose NAME looks secret. Invoke's --debug (and INVOKE_DEBUG=1) logs every
    flag's value as it parses it, before any task runs: registered while the task
    collection loads, with the filter on the handlers logging writes through, they are
    masked there too."""
    values = []
    for flag, value in zip(argv, [*argv[1:], ""], strict=True):
        name, eq, given = flag.partition("=")
        if API_KEY_FLAG.fullmatch(name):  # --api-key, or a typo of it: --api_key, --apikey
            # `--api-key= KEY` (a stray space): the word after is the key meant.
            values.append(given or value if eq else value)
        elif flag.startswith("--env=") or flag == "--env":
            pair = flag.split("=", 1)[1] if flag.startswith("--env=") else value
            name, sep, secret = pair.partition("=")
            if sep and is_secret_name(name):
                values.append(secret)
    for value in values:
        register_secret(value.strip())
        register_secret(value)
    if values:
        install_logging_filter()


# Invoke's own flags that take a value in the next word.
INVOKE_VALUE_FLAGS = {"-c", "--collection", "-f", "--config", "-r", "--search-root", "-D",
                      "--list-depth", "-F", "--list-format", "--prefix"}


def debugging(argv: list[str]) -> bool:
    """Whether Invoke will log its debug lines (--debug, -d, INVOKE_DEBUG): each flag's value
    and the task's arguments, a key pasted among them included."""
    import os

    if os.environ.get("INVOKE_DEBUG"):
        return True
    words = iter(argv[1:])
    for word in words:  # Invoke's own flags come before the first task's name
        if not word.startswith("-") or word == "--":
            return False
        if word == "--debug" or (not word.startswith("--") and "d" in word[1:]
                                 and word[1:].isalpha()):
            return True
        if word in INVOKE_VALUE_FLAGS:
            next(words, None)
    return False


def is_secret_name(name: str) -> bool:
    """An env name whose value is treated as a secret (HF_TOKEN, RUNPOD_API_KEY, ...)."""
    return bool(SECRET_NAME.search(str(name)))


def scrub_env(env: dict[str, Any] | None) -> dict[str, Any] | None:
    """A pod/template env with the values of secret-looking names (HF_TOKEN,
    RUNPOD_API_KEY, JUPYTER_PASSWORD...) masked: pod JSON is printed and saved."""
    if not isinstance(env, dict):
        return env
    return {k: (MASK if is_secret_name(k) and v else v) for k, v in env.items()}


def mask_field(name: str, value: Any) -> Any:
    """One template/pod field as it may be shown: `env` (a whole env) with its secret values
    masked, `env.NAME` masked when NAME looks secret. The one rule behind both the text and
    the --json output of every command that prints env (template.sync's changes included)."""
    if name == "env":
        return scrub_env(value)
    if name.startswith("env.") and is_secret_name(name[4:]) and value:
        return MASK
    return scrub(value)


def _is_change(data: dict[str, Any]) -> bool:
    return isinstance(data.get("field"), str) and {"before", "after"} <= set(data)


def scrub(data: Any) -> Any:
    """Pod, template, change or request JSON (or a list of them) with secret env values
    masked: every `env` object, and every change record {field: "env[.NAME]", before,
    after}. emit_json, provision.json and the text output all go through this."""
    if isinstance(data, list | tuple):
        return [scrub(item) for item in data]
    if isinstance(data, dict):
        if _is_change(data):
            return {k: mask_field(data["field"], v) if k in ("before", "after") else scrub(v)
                    for k, v in data.items()}
        return {k: scrub_env(v) if k == "env" else scrub(v) for k, v in data.items()}
    return data


# The name older callers use.
scrub_pod = scrub
