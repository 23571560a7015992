"""File metadata beyond mode and times: owners, extended attributes and POSIX ACLs (docs/format.md).

What is recorded: the owner (uid, gid and the user and group names at backup time); the ``user.*`` extended
attributes; the POSIX ACLs as their ``system.posix_acl_access`` / ``system.posix_acl_default`` attributes (the
kernel's binary form: restoring the attribute restores the ACL). Other namespaces (``security.*``,
``trusted.*``) are host-specific and not recorded.

In the tar archives these become the pax records GNU tar (``--xattrs --acls``) and bsdtar write and read:
``SCHILY.xattr.<name>`` with the raw value, plus ``SCHILY.acl.access`` / ``SCHILY.acl.default`` in the text form
of ``getfacl``; the ustar header carries uid, gid, user and group name. When an access ACL exists, the header's
mode has the group bits of the ACL's ``group::`` entry limited by its mask, so a reader that ignores ACLs never
grants more than the source did.

A restore sets owners only when running as root (names first, then ids, like tar) unless told not to, then the
mode, then the attributes; an attribute the target cannot take is a warning, and a lost access ACL narrows the
group bits as above.
"""

from __future__ import annotations

import base64
import binascii
import errno
import grp
import os
import pwd
import struct
from functools import lru_cache
from typing import Any

ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
ACL_NAMES = (ACL_ACCESS, ACL_DEFAULT)
Xattrs = tuple[tuple[str, bytes], ...]
Owner = tuple[int, int, str, str]  #: uid, gid, user name, group name ("" when the id has no name)

_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA, errno.ENOENT, errno.EPERM, errno.EACCES)


def recorded(name: str) -> bool:
    """Whether an extended attribute of this name is backed up."""
    return name.startswith("user.") or name in ACL_NAMES


def read_xattrs(target: int | str) -> Xattrs:
    """The recorded extended attributes of an open descriptor (or a path, never followed), sorted by name."""
    follow = isinstance(target, int)
    try:
        names = sorted(n for n in os.listxattr(target, follow_symlinks=follow) if recorded(n))
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return ()
        raise
    out = []
    for n in names:
        try:
            out.append((n, os.getxattr(target, n, follow_symlinks=follow)))
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
    return tuple(out)


def xattrs_json(xattrs: Xattrs) -> dict[str, str]:
    """Extended attributes as JSON: name -> value in base64."""
    return {n: base64.b64encode(v).decode("ascii") for n, v in xattrs}


def xattrs_from_json(value: object) -> Xattrs:
    """The inverse of :func:`xattrs_json`; ValueError for anything else (a damaged or crafted record)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("extended attributes are not a name -> base64 object")
    try:
        return tuple(sorted((k, base64.b64decode(v, validate=True)) for k, v in value.items()))
    except binascii.Error as exc:
        raise ValueError(f"extended attribute value is not base64 ({exc})") from None


def owner_from_json(value: object) -> Owner:
    """An owner record ``[uid, gid, user, group]``; ValueError for anything else."""
    fields: Any = value  # unpacked below: anything but four items raises
    try:
        uid, gid, user, group = fields
    except (TypeError, ValueError):
        raise ValueError("owner is not [uid, gid, user, group]") from None
    if type(uid) is not int or type(gid) is not int or uid < 0 or gid < 0 or type(user) is not str or type(group) is not str:
        raise ValueError("owner is not [uid, gid, user, group]")
    return (uid, gid, user, group)


@lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return ""


@lru_cache(maxsize=1024)
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError):
        return ""


@lru_cache(maxsize=1024)
def owner_of(uid: int, gid: int) -> Owner:
    """The owner record of ``uid``/``gid`` (cached like the names: asked twice for every file of a backup)."""
    return (uid, gid, user_name(uid), group_name(gid))


@lru_cache(maxsize=1024)
def _uid_of(name: str, fallback: int) -> int:
    try:
        return pwd.getpwnam(name).pw_uid if name else fallback
    except KeyError:
        return fallback


@lru_cache(maxsize=1024)
def _gid_of(name: str, fallback: int) -> int:
    try:
        return grp.getgrnam(name).gr_gid if name else fallback
    except KeyError:
        return fallback


def resolve_owner(owner: Owner) -> tuple[int, int]:
    """The ids to restore: the recorded names as this host knows them, else the recorded ids (tar's rule)."""
    uid, gid, uname, gname = owner
    return _uid_of(uname, uid), _gid_of(gname, gid)


# ------------------------------------------------------------------------------------------------ POSIX ACLs
_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}


def _acl_entries(value: bytes) -> list[tuple[int, int, int]]:
    """(tag, perm, id) of a binary ACL (``struct posix_acl_xattr_header`` + entries); [] when not one."""
    if len(value) < 4 or (len(value) - 4) % 8 or struct.unpack_from("<I", value)[0] != 2:
        return []
    return [struct.unpack_from("<HHI", value, off) for off in range(4, len(value), 8)]


def acl_text(value: bytes) -> str:
    """The ``getfacl`` text form of a binary ACL, one entry a line (what GNU tar writes as ``SCHILY.acl.*``)."""
    lines = []
    for tag, perm, ident in _acl_entries(value):
        kind = _TAGS.get(tag)
        if kind is None:
            continue
        who = ""
        if tag == 0x02:
            who = user_name(ident) or str(ident)
        elif tag == 0x08:
            who = group_name(ident) or str(ident)
        rwx = ("r" if perm & 4 else "-") + ("w" if perm & 2 else "-") + ("x" if perm & 1 else "-")
        lines.append(f"{kind}:{who}:{rwx}")
    return "".join(line + "\n" for line in lines)


def narrowed_mode(mode: int, xattrs: Xattrs) -> int:
    """``mode`` with its group bits limited to what the access ACL's ``group::`` entry grants (the group bits of
    a file with an ACL are the ACL's mask, which may be wider than the owning group's own permissions)."""
    for name, value in xattrs:
        if name == ACL_ACCESS:
            entries = _acl_entries(value)
            group_obj = next((p for t, p, _ in entries if t == 0x04), None)
            if group_obj is not None:
                return mode & ~0o070 | (mode & 0o070 & (group_obj << 3))
    return mode


def pax_records(xattrs: Xattrs) -> dict[str, bytes]:
    """The pax records of a member's extended attributes and ACLs (empty when it has none)."""
    recs: dict[str, bytes] = {}
    for name, value in xattrs:
        if name == ACL_ACCESS:
            recs["SCHILY.acl.access"] = acl_text(value).encode()
        elif name == ACL_DEFAULT:
            recs["SCHILY.acl.default"] = acl_text(value).encode()
        recs[f"SCHILY.xattr.{name}"] = value
    return recs


def apply(fd: int, mode: int, owner: Owner | None, xattrs: Xattrs, *, chown: bool, where: str,
          warnings: list[str], strip_acls: bool = False) -> None:
    """Restore owner (when ``chown``), mode and extended attributes on an open descriptor, in that order (a
    chown clears set-id bits; an ACL rewrites the group bits). What the target cannot take is a warning.
    ``strip_acls``: first remove the ACLs the entry inherited from a default ACL above it but did not have."""
    if chown and owner is not None:
        os.fchown(fd, *resolve_owner(owner))
    if strip_acls:
        names = {n for n, _ in xattrs}
        for name in ACL_NAMES:
            if name not in names:
                try:
                    os.removexattr(fd, name)
                except OSError:  # none there (ENODATA), not a directory (a default ACL), no ACL support
                    pass
    os.fchmod(fd, mode)
    for name, value in xattrs:
        if not recorded(name):  # only a crafted index holds others (security.capability would grant privileges)
            warnings.append(f"{where}: extended attribute {name} not restored (only user.* attributes and ACLs are)")
            continue
        try:
            os.setxattr(fd, name, value)
        except OSError as exc:
            warnings.append(f"{where}: extended attribute {name} not restored ({exc.strerror})")
            if name == ACL_ACCESS:
                os.fchmod(fd, narrowed_mode(mode, xattrs))
