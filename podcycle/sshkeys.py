"""The operator's SSH key: which one, its public line, whether the account has it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from podcycle import sshopts
from podcycle.config import Settings
from podcycle.errors import PodCycleError


class KeyMissing(PodCycleError):
    """No file where the SSH private key should be (another refusal: the key is unusable)."""


def local_backend_key(local_dir: Path) -> Path:
    """A key of the local RunPod's own, made on first use, so the local cycle never needs (or
    touches) the operator's ~/.ssh."""
    key = local_dir.resolve() / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                        "pod-cycle-local", "-f", str(key)], check=True)
    return key


def private_key(settings: Settings, own_key: Path | None = None) -> Path:
    """RUNPOD_SSH_KEY (or --ssh-key) when set explicitly; else the backend's own key when it
    has one (the local RunPod); else the default ~/.ssh/id_ed25519."""
    path = settings.ssh_key.expanduser() if settings.ssh_key else None
    if own_key is not None and not given(settings):
        sshopts.check_path(own_key, "the local RunPod's SSH key",
                           f"set POD_CYCLE_LOCAL_DIR to a folder {sshopts.CLEAN}")
        return own_key
    origin = settings.source("ssh_key")
    origin = "the default RUNPOD_SSH_KEY" if origin == "default" else f"from {origin}"
    if path is None or not path.exists():
        raise KeyMissing(
            f"SSH private key not found: {path} ({origin})",
            "create one with ssh-keygen -t ed25519, or point RUNPOD_SSH_KEY at yours")
    if path.is_dir():
        raise PodCycleError(
            f"the SSH private key {path} ({origin}) is a folder",
            f"point RUNPOD_SSH_KEY at the key file in it, e.g. {path / 'id_ed25519'}")
    if not path.is_file():
        raise PodCycleError(f"the SSH private key {path} ({origin}) is not a file",
                            "point RUNPOD_SSH_KEY at your private key file")
    if _is_public(path):
        if held_by_agent(path):
            # Its private half lives in an agent alone (1Password, Secretive, a YubiKey):
            # ssh -i KEY.pub and the cycle's paramiko both sign through the agent.
            sshopts.check_path(path, f"the SSH public key ({origin})",
                               f"point RUNPOD_SSH_KEY at a copy of the key {sshopts.CLEAN}")
            return path
        private = path.with_suffix("") if path.suffix == ".pub" else None
        raise PodCycleError(
            f"{path} ({origin}) is a public key; SSH needs the private half",
            f"point RUNPOD_SSH_KEY at {private}" if private else
            "point RUNPOD_SSH_KEY at the private key (the file without .pub)")
    sshopts.check_path(path, f"the SSH private key ({origin})",
                       f"point RUNPOD_SSH_KEY at a copy of the key {sshopts.CLEAN}")
    check_mode(path, origin)
    if needs_passphrase(path):
        agent, held = agent_key(path)
        if agent is not None:
            agent.close()
        if held is None:
            raise locked_without_agent(path, origin)
    else:
        check_loadable(path, origin)
    return path


def check_loadable(path: Path, origin: str) -> None:
    """An unencrypted key as both of its readers load it, before a pod is made: OpenSSH (the
    rsync of push and collect, pod.ssh) and paramiko (the cycle's commands); and its .pub
    beside it, whatever the key's format, checked to be its public half. A key saved with
    Windows line endings passed every check, api.doctor's too, and each rsync then failed
    with "Permission denied (publickey)"; a PEM key whose .pub was another key's was
    registered as that one."""
    if _size(path) > MAX_KEY_BYTES:
        raise PodCycleError(f"the SSH private key {path} ({origin}) is {_size(path):,} bytes: "
                            "not an SSH private key",
                            "point RUNPOD_SSH_KEY at your private key (e.g. ~/.ssh/id_ed25519)")
    fix = (f"point RUNPOD_SSH_KEY at a key ssh reads, e.g. a new one (ssh-keygen -t ed25519 -f "
           f"KEY; then inv api.doctor --register-ssh-key), or mend this one (ssh-keygen -y -f "
           f"{path} says why ssh cannot read it)")
    try:
        derived = subprocess.run(["ssh-keygen", "-y", "-P", "", "-f", str(path)],
                                 capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                 timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        derived = None  # no ssh-keygen: hosttools names what is missing before it matters
    if derived is not None and derived.returncode != 0:
        from podcycle.redact import printable

        said = printable((derived.stderr.strip().splitlines() or ["no reason given"])[-1])
        if "\r\n" in _text_of(path):  # saved on Windows, or pasted so
            said, fix = (f"{said[:120]} (it has Windows line endings)",
                         f"remove them (perl -pi -e 's/\\r$//' {path}) and run the command again")
        raise PodCycleError(f"ssh cannot load the SSH private key {path} ({origin}): "
                            f"{said[:160]}", fix)
    _, why = paramiko_key(path)
    if why is not None:  # a security key (sk-): ssh uses it, the cycle's paramiko cannot
        raise KeyNotForCycle(f"the SSH private key {path} ({origin}) cannot be loaded by "
                             f"paramiko, which runs the cycle's commands: {why}",
                             "point RUNPOD_SSH_KEY at a key without a security key or "
                             "passphrase for the cycle (e.g. ssh-keygen -t ed25519 -N '' -f "
                             "~/.ssh/pod-cycle; then inv api.doctor --register-ssh-key)", path)
    pub = path.with_name(path.name + ".pub")
    if derived is not None and pub.is_file():
        try:
            line = pub.read_bytes()[:MAX_KEY_BYTES].decode().strip()
        except (OSError, UnicodeDecodeError):
            return  # public_line names what is wrong with it, where it is read
        if KEY_LINE.fullmatch(line) and blob(line) != blob(derived.stdout):
            raise PodCycleError(f"{pub} is not the public half of {path}: it holds another "
                                "key", f"write it again with: ssh-keygen -y -f {path} > {pub}")


def paramiko_key(path: Path) -> tuple[Any, str | None]:
    """(the key as paramiko loads it, None), or (None, why it cannot): the one loader of a key
    file without a passphrase (one with is the agent's: agent_key). Any failure is a why,
    never a traceback: a security key (sk-ssh-ed25519) raised cryptography's
    UnsupportedAlgorithm past every handler."""
    import paramiko

    try:
        return paramiko.PKey.from_path(str(path)), None
    except Exception as exc:  # noqa: BLE001 - paramiko and cryptography raise many kinds
        from podcycle.redact import printable

        return None, printable(str(exc).strip() or type(exc).__name__)[:160]


class KeyNotForCycle(PodCycleError):
    """A key OpenSSH uses and the cycle's paramiko cannot (a security key): refused for the
    cycle, while pod.ssh (ssh itself) and pod.provision (its .pub) take `path` all the
    same."""

    def __init__(self, message: str, remedy: str, path: Path) -> None:
        super().__init__(message, remedy)
        self.path = path


def given(settings: Settings) -> bool:
    """Whether RUNPOD_SSH_KEY (or --ssh-key) was set, not left at its default."""
    source = settings.source("ssh_key")
    return source != "default" and not source.startswith("podcycle.")  # Invoke's config


def check_mode(path: Path, origin: str) -> None:
    """OpenSSH refuses a private key of its user's that others may read (authfile.c,
    sshkey_perm_ok: "UNPROTECTED PRIVATE KEY FILE"): said here, before a pod is made whose
    every SSH step would then fail with "Permission denied (publickey)"."""
    import os

    st = path.stat()
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        raise PodCycleError(
            f"the SSH private key {path} ({origin}) may be read by others (mode "
            f"{st.st_mode & 0o777:04o}), and ssh refuses such a key",
            f"chmod 600 {path}")


def _is_public(path: Path) -> bool:
    """A public key line (`ssh-ed25519 AAAA… comment`), not a private key file."""
    try:
        with path.open("rb") as handle:
            head = handle.read(64)
    except OSError:
        return False  # unreadable: ssh names that more precisely than a guess here
    return bool(re.match(rb"(ssh|ecdsa|sk)-[\w@.-]+ AAAA", head))


# An SSH private key is a few KB (RSA 16384 bits: about 12 KB). ssh-keygen took minutes on
# a file of tens of MB given as the key by mistake.
MAX_KEY_BYTES = 256 * 1024


def public_line(private: Path) -> str:
    """The public half of `private`: its .pub beside it (checked to be that key's, where the
    private file says), else what ssh-keygen -y derives."""
    pub = private.with_name(private.name + ".pub")
    again = f"write it again with: ssh-keygen -y -f {private} > {pub}"
    if _is_public(private):  # a key an agent alone holds, given by its public half
        pub, again = private, "point RUNPOD_SSH_KEY at the key's .pub (ssh-add -L lists them)"
    if pub.is_file():
        try:
            raw = pub.read_bytes()[:MAX_KEY_BYTES]
            line = raw.decode().strip()
        except UnicodeDecodeError:
            raise PodCycleError(f"{pub} is not an OpenSSH public key (not UTF-8 text)",
                                again) from None
        except OSError as exc:
            raise PodCycleError(f"{pub} cannot be read ({exc.strerror})", again) from None
        if not KEY_LINE.fullmatch(line):  # empty (a failed `ssh-keygen -y > it`), or prose
            raise PodCycleError(f"{pub} is not an OpenSSH public key line"
                                + (" (it is empty)" if not line else ""), again)
        own = _public_blob_of(private)
        if own is not None and blob(line) != own:
            # Registered, it let pods in for a key this one is not: every SSH step failed.
            raise PodCycleError(f"{pub} is not the public half of {private}: it holds another "
                                "key", again)
        return line
    if _size(private) > MAX_KEY_BYTES:
        raise PodCycleError(f"{private} is {_size(private):,} bytes: not an SSH private key",
                            "point RUNPOD_SSH_KEY at your private key (e.g. ~/.ssh/id_ed25519)")
    if _openssh_fields(private) is None and not _looks_like_pem_key(private):
        raise PodCycleError(f"{private} is not an SSH private key",
                            "point RUNPOD_SSH_KEY at your private key (e.g. ~/.ssh/id_ed25519)")
    try:
        out = subprocess.run(["ssh-keygen", "-y", "-f", str(private)], capture_output=True,
                             text=True, check=True, stdin=subprocess.DEVNULL, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        raise PodCycleError(f"cannot read the public half of {private} (passphrase?)",
                            f"write it with: ssh-keygen -y -f {private} > {pub}") from None
    return out.stdout.strip()


def _text_of(private: Path) -> str:
    """The key file's text as far as a key goes ("" when it cannot be read)."""
    try:
        return private.read_bytes()[:MAX_KEY_BYTES].decode("ascii", "replace")
    except OSError:
        return ""


def _looks_like_pem_key(private: Path) -> bool:
    """A PEM private key (RSA, EC, PKCS#8, encrypted or not): ssh-keygen reads those too."""
    return re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", _text_of(private)) is not None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _public_blob_of(private: Path) -> str | None:
    """The public key an OpenSSH private key file holds in the clear (openssh-key-v1: it is
    there, unencrypted, before the private part, passphrase or not), base64 as in a .pub
    line; None for another format or a file that is not one (ssh says what is wrong)."""
    fields = _openssh_fields(private)
    return fields[1] if fields else None


def _openssh_fields(private: Path) -> tuple[str, str] | None:
    """An openssh-key-v1 file's cipher name ("none": no passphrase) and public key (base64),
    both in the clear; None for another format or a file that is not one."""
    import base64
    import binascii
    import struct

    try:
        text = private.read_bytes()[:MAX_KEY_BYTES].decode("ascii")
        body = text.split("-----BEGIN OPENSSH PRIVATE KEY-----", 1)[1]
        body = body.split("-----END OPENSSH PRIVATE KEY-----", 1)[0]
        data = base64.b64decode("".join(body.split()), validate=True)
        magic = b"openssh-key-v1\0"
        if not data.startswith(magic):
            return None
        at = len(magic)
        (size,) = struct.unpack_from(">I", data, at)
        cipher = data[at + 4:at + 4 + size].decode("ascii")
        for _ in range(3):  # cipher name, KDF name, KDF options
            (size,) = struct.unpack_from(">I", data, at)
            at += 4 + size
        at += 4  # the number of keys
        (size,) = struct.unpack_from(">I", data, at)
        public = data[at + 4:at + 4 + size]
        if len(public) != size or not size:
            return None
        return cipher, base64.b64encode(public).decode()
    except (OSError, UnicodeDecodeError, IndexError, binascii.Error, struct.error):
        return None


def held_by_agent(path: Path) -> bool:
    """Whether an ssh-agent holds the key of `path` (its private file, or its .pub)."""
    agent, held = agent_key(path)
    if agent is not None:
        agent.close()
    return held is not None


def through_agent(path: Path) -> bool:
    """Whether the key is used through ssh-agent's copy: a private file with a passphrase
    (pod-cycle asks for none), or a public key whose private half only an agent holds."""
    return needs_passphrase(path) or _is_public(path)


def needs_passphrase(private: Path) -> bool:
    """Whether the key file is encrypted: an OpenSSH key with a cipher, or a PEM key marked
    ENCRYPTED (`Proc-Type: 4,ENCRYPTED`, `BEGIN ENCRYPTED PRIVATE KEY`)."""
    fields = _openssh_fields(private)
    if fields is not None:
        return fields[0] != "none"
    head = _text_of(private)
    return "-----BEGIN" in head and "ENCRYPTED" in head


def agent_key(private: Path) -> tuple[Any, Any]:
    """(agent, key): the key of `private` as ssh-agent (SSH_AUTH_SOCK) holds it, unlocked (a
    paramiko AgentKey), through a connection to the agent of its own: paramiko's agent
    client is not thread-safe, and a cluster opens its nodes' sessions at once. The caller
    closes the agent once the key has signed. (None, None) without an agent holding it."""
    import base64
    import os

    wanted = _public_blob_of(private)
    pub = private.with_name(private.name + ".pub")
    if _is_public(private):  # the key given by its public half (agent_only keys)
        pub = private
    if wanted is None and pub.is_file():
        try:
            wanted = blob(pub.read_bytes()[:MAX_KEY_BYTES].decode())
        except (OSError, UnicodeDecodeError):
            wanted = None
    if not wanted or not os.environ.get("SSH_AUTH_SOCK"):
        return None, None
    import paramiko

    try:
        agent = paramiko.Agent()
    except (paramiko.SSHException, OSError):
        return None, None
    try:
        keys = agent.get_keys()
    except (paramiko.SSHException, OSError):
        keys = ()
    held = next((k for k in keys if base64.b64encode(k.asbytes()).decode() == wanted), None)
    if held is None:
        agent.close()
        return None, None
    return agent, held


class KeyLocked(PodCycleError):
    """A key with a passphrase that no ssh-agent holds (`path`): the cycle cannot use it; a
    shell (pod.ssh) can, its ssh asking for the passphrase."""

    def __init__(self, message: str, remedy: str, path: Path) -> None:
        super().__init__(message, remedy)
        self.path = path


def locked_without_agent(private: Path, origin: str) -> KeyLocked:
    """A key with a passphrase that no ssh-agent holds: pod-cycle never asks for one (its
    SSH runs unattended, rsync in batch mode), and sshd's refusal read as an unregistered
    key."""
    pub = private.with_name(private.name + ".pub")
    if _public_blob_of(private) is None and not pub.is_file():
        # A PEM key keeps its public half encrypted: without a .pub, the agent's copy of it
        # cannot be told apart, and "load it into your agent" was said to one who had.
        return KeyLocked(
            f"the SSH private key {private} ({origin}) is protected by a passphrase, and its "
            f"public half is not known (no {pub.name} beside it), so its copy in an ssh-agent "
            "cannot be found",
            f"write it (ssh-keygen -y -f {private} > {pub}, which asks for the passphrase "
            "once) and run the command again", private)
    return KeyLocked(
        f"the SSH private key {private} ({origin}) is protected by a passphrase, and no "
        "ssh-agent holds it: pod-cycle never asks for a passphrase",
        f'load it into your agent (eval "$(ssh-agent -s)"; ssh-add {private}) and run the '
        "command again in that shell, or point RUNPOD_SSH_KEY at a key without one "
        "(ssh-keygen -t ed25519 -N '' -f ~/.ssh/pod-cycle)", private)


def blob(line: str) -> str:
    parts = line.split()
    return parts[1] if len(parts) >= 2 else line


def is_registered(line: str, keys: list[str]) -> bool:
    return any(blob(k) == blob(line) for k in keys)


def not_registered(key_path: Path | None) -> PodCycleError:
    """The one message for a key the account lacks (provision refuses with it, api.doctor
    reports it): pods created with SSH accept only the account's registered keys."""
    if key_path is not None:
        what = f"your SSH key {key_path}.pub is not registered on the RunPod account"
    else:
        what = "the RunPod account has no SSH public key registered"
    return PodCycleError(
        f"{what}, so a pod created now would refuse SSH",
        "run inv api.doctor --register-ssh-key (it registers RUNPOD_SSH_KEY's public half, "
        "default ~/.ssh/id_ed25519.pub), or add it in the RunPod console → Settings → SSH "
        "Public Keys; then run the command again")


# The spec's pattern for each key of PUT /v2/account/ssh-keys.
KEY_LINE = re.compile(r"(ssh|ecdsa|sk)-[^\s]+ [^\s]+([ \t][^\n\r]*)?")


def register(client: Any, line: str, keys: list[str] | None = None) -> list[str]:
    """Add `line` to the account's keys (PUT replaces the whole set). A malformed key already
    on the account is reported, never re-sent (the PUT would be refused) nor dropped."""
    keys = client.get_ssh_keys() if keys is None else keys
    if not KEY_LINE.fullmatch(line):
        raise PodCycleError(f"your public key is not an authorized_keys line: {line[:40]!r}…",
                            "regenerate it with ssh-keygen -y -f <private key>")
    bad = [k for k in keys if not isinstance(k, str) or not KEY_LINE.fullmatch(k)]
    if bad:
        shown = "; ".join(repr(str(k)[:40]) for k in bad[:3])
        raise PodCycleError(
            f"the account holds {len(bad)} malformed SSH key(s) ({shown}); registering yours "
            "would re-send them and RunPod refuses the whole set",
            "fix or remove them in the RunPod console → Settings → SSH Public Keys, then run "
            "the command again")
    return client.put_ssh_keys([*keys, line])
