"""The record folder and file (issue 12): what can be checked without Windows.

That the DACL takes and that a junction, a symbolic link or a second hard link is refused can
only be seen on Windows (driver/README.md, "Not verifiable here", says how to try it on a
guest). Here: tests/driver/test_driver_wdm_compile.py type-checks every call with mingw-w64's DDK
headers and pins the imports; this file checks, from the source, that the calls are made in
the order that makes them protect anything.
"""

from __future__ import annotations

import re

from tests.support.driver_toolchain import DRIVER_DIR

WDM = (DRIVER_DIR / "recorder" / "recorder_wdm.c").read_text()  # the recorder opens every file


def _body(name: str) -> str:
    match = re.search(rf"^{name}\(", WDM, re.MULTILINE)
    assert match, name
    start = WDM.index("{", match.end())
    depth = 0
    for index in range(start, len(WDM)):
        depth += {"{": 1, "}": -1}.get(WDM[index], 0)
        if depth == 0:
            return WDM[start:index + 1]
    raise AssertionError(name)


def test_both_opens_bypass_reparse_points_and_nothing_is_truncated_by_the_open() -> None:
    body = _body("HapOpenRecordFile")
    opens = body.split("ZwCreateFile(")[1:]
    assert len(opens) == 2
    for call in opens:
        arguments = call.split(";")[0]
        assert "FILE_OPEN_REPARSE_POINT" in arguments and "FILE_OPEN_IF" in arguments
        assert "FILE_OVERWRITE" not in arguments and "FILE_SUPERSEDE" not in arguments
    assert "FILE_NON_DIRECTORY_FILE" in opens[1].split(";")[0]
    assert "FILE_DIRECTORY_FILE" in opens[0].split(";")[0]


def test_the_file_is_opened_by_the_checked_folder_and_checked_before_truncation() -> None:
    body = _body("HapOpenRecordFile")
    # a bare name inside the folder: the probe's records.jsonl, or a writer's
    # records-<name>.jsonl (recorder_name.c lets no separator or dot into <name>)
    assert "RtlInitUnicodeString(&fileName, FileName);" in body and "HAP_RECORD_FILE_W" not in body
    assert "options.FileName = HAP_RECORD_NAME_W;" in (DRIVER_DIR / "probe_wdm.c").read_text()
    assert re.search(r"InitializeObjectAttributes\(&attributes, &fileName,\s*"
                     r"OBJ_CASE_INSENSITIVE \| OBJ_KERNEL_HANDLE, directory,\s*"
                     r"&security.Descriptor\)", body)
    order = [body.index(s) for s in ("HapBuildRecordSecurity(&security)",
                                     "HapRefuseLinkedFile(directory, TRUE)",
                                     "HapSecureRecordHandle(directory, &security)",
                                     "ZwCreateFile(File",
                                     "HapRefuseLinkedFile(*File, FALSE)",
                                     "HapSecureRecordHandle(*File, &security)",
                                     "FileEndOfFileInformation")]
    assert order == sorted(order)
    # Created with the descriptor: a new folder or file never has ProgramData's ACL.
    assert body.count("&security.Descriptor);") == 2


def test_links_are_refused_by_attribute_and_link_count() -> None:
    body = _body("HapRefuseLinkedFile")
    assert "FileAttributeTagInformation" in body and "FILE_ATTRIBUTE_REPARSE_POINT" in body
    assert "FileStandardInformation" in body and "NumberOfLinks != 1u" in body


def test_the_dacl_is_system_and_administrators_only_and_protected() -> None:
    body = _body("HapBuildRecordSecurity")
    aces = re.findall(r"RtlAddAccessAllowedAceEx\([^;]*?(SeExports->\w+)\)", body, re.S)
    assert aces == ["SeExports->SeLocalSystemSid", "SeExports->SeAliasAdminsSid"]
    assert "OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE" in body
    assert "SE_DACL_PROTECTED" in body
    assert "RtlSetOwnerSecurityDescriptor(&Security->Descriptor,\n" in body
    secure = _body("HapSecureRecordHandle")
    assert "DACL_SECURITY_INFORMATION |" in secure
    assert "PROTECTED_DACL_SECURITY_INFORMATION" in secure
    assert "OWNER_SECURITY_INFORMATION" in secure
