"""The rendered Autounattend.xml, checked by XPath (with the unattend namespaces) for every
supported Windows version x firmware: what Windows Setup needs to install without a prompt."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

import pytest

from harness.errors import InputError
from harness.guests import windows_setup
from harness.guests.windows_setup import ImageSelector, UnattendSettings, WindowsVersion
from harness.host.domain import Firmware

NS = {"u": "urn:schemas-microsoft-com:unattend",
      "wcm": "http://schemas.microsoft.com/WMIConfig/2002/State"}
PASSWORD = "Lab-Only-Pa55!<&>"
VERSIONS = [WindowsVersion.WS2019, WindowsVersion.WS2022, WindowsVersion.WS2025]


def render(version: WindowsVersion, firmware: Firmware,
           image: ImageSelector | None = None) -> ET.Element:
    text = windows_setup.render_autounattend(UnattendSettings(
        version=version, firmware=firmware, password=PASSWORD,
        image=image or ImageSelector(name=f"Windows Server {version.value} SERVERDATACENTER")))
    assert PASSWORD not in text
    return ET.fromstring(text.encode("utf-8"))


def component(root: ET.Element, pass_: str, name: str) -> ET.Element:
    found = root.findall(f"u:settings[@pass='{pass_}']/u:component[@name='{name}']", NS)
    assert len(found) == 1, f"{pass_}/{name}"
    assert found[0].get("processorArchitecture") == "amd64"
    return found[0]


def text(node: ET.Element, path: str) -> str:
    found = node.find(path, NS)
    assert found is not None, path
    return found.text or ""


def decoded(value: str) -> str:
    return base64.b64decode(value).decode("utf-16-le")


@pytest.mark.parametrize("firmware", list(Firmware), ids=lambda f: f.value)
@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.value)
def test_answer_file(version: WindowsVersion, firmware: Firmware) -> None:
    root = render(version, firmware)
    assert root.tag == "{urn:schemas-microsoft-com:unattend}unattend"

    setup = component(root, "windowsPE", "Microsoft-Windows-Setup")
    meta = setup.find("u:ImageInstall/u:OSImage/u:InstallFrom/u:MetaData", NS)
    assert meta is not None and meta.get(f"{{{NS['wcm']}}}action") == "add"
    assert text(meta, "u:Key") == "/IMAGE/NAME"
    assert text(meta, "u:Value") == f"Windows Server {version.value} SERVERDATACENTER"
    assert text(setup, "u:UserData/u:AcceptEula") == "true"
    assert setup.find("u:UserData/u:ProductKey", NS) is None  # evaluation media need none
    disk = setup.find("u:DiskConfiguration/u:Disk", NS)
    assert disk is not None and text(disk, "u:WillWipeDisk") == "true"
    types = [t.text for t in disk.findall("u:CreatePartitions/u:CreatePartition/u:Type", NS)]
    target = text(setup, "u:ImageInstall/u:OSImage/u:InstallTo/u:PartitionID")
    if firmware is Firmware.UEFI:
        assert types == ["EFI", "MSR", "Primary"]
        assert text(disk, "u:ModifyPartitions/u:ModifyPartition[u:PartitionID='1']/u:Format") \
            == "FAT32"
        assert target == "3"
        orders = [o.text for o in disk.findall("u:ModifyPartitions/u:ModifyPartition/u:Order", NS)]
        assert orders == ["1", "2"]  # consecutive; the MSR partition is left alone
    else:
        assert types == ["Primary"]
        assert text(disk, "u:ModifyPartitions/u:ModifyPartition[u:PartitionID='1']/u:Active") \
            == "true"
        assert target == "1"
    assert text(disk, f"u:ModifyPartitions/u:ModifyPartition[u:PartitionID='{target}']"
                      "/u:Format") == "NTFS"

    pnp = component(root, "windowsPE", "Microsoft-Windows-PnpCustomizationsWinPE")
    paths = [p.text or "" for p in pnp.findall("u:DriverPaths/u:PathAndCredentials/u:Path", NS)]
    keys = [p.get(f"{{{NS['wcm']}}}keyValue")
            for p in pnp.findall("u:DriverPaths/u:PathAndCredentials", NS)]
    assert len(set(keys)) == len(keys)
    assert f"E:\\$WinPEDriver$\\viostor\\{version.virtio_dir}\\amd64" in paths
    assert f"D:\\$WinPEDriver$\\vioscsi\\{version.virtio_dir}\\amd64" in paths
    assert all(f"\\{version.virtio_dir}\\amd64" in p for p in paths)
    assert root.find("u:settings[@pass='offlineServicing']", NS) is None

    shell = component(root, "oobeSystem", "Microsoft-Windows-Shell-Setup")
    admin = shell.find("u:UserAccounts/u:AdministratorPassword", NS)
    assert admin is not None and text(admin, "u:PlainText") == "false"
    assert decoded(text(admin, "u:Value")) == PASSWORD + "AdministratorPassword"
    assert text(shell, "u:AutoLogon/u:Enabled") == "true"
    assert text(shell, "u:AutoLogon/u:Username") == "Administrator"
    assert decoded(text(shell, "u:AutoLogon/u:Password/u:Value")) == PASSWORD + "Password"
    assert int(text(shell, "u:AutoLogon/u:LogonCount")) >= 2  # survives the provisioning reboot
    cmds = shell.findall("u:FirstLogonCommands/u:SynchronousCommand", NS)
    assert [text(c, "u:Order") for c in cmds] == ["1"]
    line = text(cmds[0], "u:CommandLine")
    assert line.startswith("cmd.exe /c for %d in (D E F G")
    assert f"if exist %d:\\{windows_setup.PROVISION_SCRIPT.name} " in line
    assert f"-File %d:\\{windows_setup.PROVISION_SCRIPT.name}" in line
    assert text(shell, "u:OOBE/u:HideEULAPage") == "true"
    assert text(component(root, "specialize", "Microsoft-Windows-Shell-Setup"),
                "u:ComputerName") == "HOTADD-WIN"


def test_image_by_index() -> None:
    root = render(WindowsVersion.WS2022, Firmware.UEFI, ImageSelector(index=4))
    meta = component(root, "windowsPE", "Microsoft-Windows-Setup").find(
        "u:ImageInstall/u:OSImage/u:InstallFrom/u:MetaData", NS)
    assert meta is not None
    assert (text(meta, "u:Key"), text(meta, "u:Value")) == ("/IMAGE/INDEX", "4")


def test_server_2016_uses_its_driver_folders() -> None:
    root = render(WindowsVersion.WS2016, Firmware.BIOS)
    paths = [p.text or "" for p in root.iterfind(".//u:DriverPaths/u:PathAndCredentials/u:Path",
                                                 NS)]
    assert paths and all("\\2k16\\amd64" in p for p in paths)


def test_names_with_markup_are_escaped() -> None:
    root = render(WindowsVersion.WS2022, Firmware.UEFI, ImageSelector(name="A & <B>"))
    assert root.find(".//u:MetaData/u:Value", NS) is not None
    assert text(root, ".//u:MetaData/u:Value") == "A & <B>"


def test_selector_and_settings_errors() -> None:
    with pytest.raises(InputError, match="exactly one"):
        ImageSelector(name="x", index=1)
    with pytest.raises(InputError, match="exactly one"):
        ImageSelector()
    assert ImageSelector.parse("3") == ImageSelector(index=3)
    assert ImageSelector.parse("Windows Server 2022 SERVERSTANDARD").name is not None
    with pytest.raises(InputError, match="password is empty"):
        UnattendSettings(WindowsVersion.WS2022, Firmware.UEFI, ImageSelector(index=1), "")
    settings = UnattendSettings(WindowsVersion.WS2022, Firmware.UEFI, ImageSelector(index=1),
                                PASSWORD)
    assert PASSWORD not in repr(settings)


def test_template_itself_is_well_formed() -> None:
    ET.fromstring(windows_setup.TEMPLATE.read_bytes())
