"""The rendered Autounattend.xml, checked by XPath (with the unattend namespaces) for every
supported Windows version x firmware: what Windows Setup needs to install without a prompt."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

import pytest

from harness.errors import InputError
from harness.guests import windows_setup
from harness.guests.windows_setup import (
    ImageSelector,
    UnattendSettings,
    WimImage,
    WindowsVersion,
)
from harness.host.domain import Firmware

NS = {"u": "urn:schemas-microsoft-com:unattend",
      "wcm": "http://schemas.microsoft.com/WMIConfig/2002/State"}
PASSWORD = "Lab-Only-Pa55!<&>"
VERSIONS = [WindowsVersion.WS2019, WindowsVersion.WS2022, WindowsVersion.WS2025]


def image_of(version: WindowsVersion, index: int = 2, name: str = "") -> WimImage:
    return WimImage(index=index, name=name or f"Windows Server {version.value} SERVERDATACENTER",
                    edition_id="ServerDatacenterEval", build=version.build)


def render(version: WindowsVersion, firmware: Firmware, image: WimImage | None = None,
           product_key: str | None = None) -> ET.Element:
    text = windows_setup.render_autounattend(UnattendSettings(
        version=version, firmware=firmware, password=PASSWORD,
        image=image or image_of(version), product_key=product_key))
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
    assert text(meta, "u:Key") == "/IMAGE/INDEX"
    assert text(meta, "u:Value") == "2"
    assert text(setup, "u:UserData/u:AcceptEula") == "true"
    assert setup.find("u:UserData/u:ProductKey", NS) is None  # evaluation media need none
    assert component(root, "specialize", "Microsoft-Windows-Shell-Setup").find(
        "u:ProductKey", NS) is None
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


def test_image_by_the_index_install_wim_gave_it() -> None:
    """Whatever the user typed (a name in another case, say), Setup gets the index read from
    the ISO: /IMAGE/NAME must match install.wim's NAME exactly."""
    root = render(WindowsVersion.WS2022, Firmware.UEFI,
                  image_of(WindowsVersion.WS2022, index=4, name="A & <B>"))
    meta = component(root, "windowsPE", "Microsoft-Windows-Setup").find(
        "u:ImageInstall/u:OSImage/u:InstallFrom/u:MetaData", NS)
    assert meta is not None
    assert (text(meta, "u:Key"), text(meta, "u:Value")) == ("/IMAGE/INDEX", "4")
    assert root.find(".//u:MetaData[u:Key='/IMAGE/NAME']", NS) is None


KEY = "ABCDE-12345-FGHIJ-67890-KLMNO"


@pytest.mark.parametrize("firmware", list(Firmware), ids=lambda f: f.value)
def test_product_key_in_windows_pe_and_specialize(firmware: Firmware) -> None:
    root = render(WindowsVersion.WS2022, firmware, product_key=KEY)
    setup = component(root, "windowsPE", "Microsoft-Windows-Setup")
    assert text(setup, "u:UserData/u:ProductKey/u:Key") == KEY
    assert text(setup, "u:UserData/u:ProductKey/u:WillShowUI") == "OnError"
    assert text(component(root, "specialize", "Microsoft-Windows-Shell-Setup"),
                "u:ProductKey") == KEY
    assert ET.tostring(root).count(KEY.encode()) == 2


def test_malformed_product_key_is_refused_without_showing_it() -> None:
    secret = "NOT-A-KEY-SECRET"
    with pytest.raises(InputError) as err:
        UnattendSettings(WindowsVersion.WS2022, Firmware.UEFI, image_of(WindowsVersion.WS2022),
                         PASSWORD, product_key=secret)
    assert secret not in str(err.value) and "--product-key-env" in str(err.value)
    settings = UnattendSettings(WindowsVersion.WS2022, Firmware.UEFI,
                                image_of(WindowsVersion.WS2022), PASSWORD, product_key=KEY)
    assert KEY not in repr(settings)


@pytest.mark.parametrize(("edition_id", "display", "evaluation"), [
    ("ServerStandardEval", "Windows Server 2022 Standard Evaluation", True),
    ("ServerDatacenterEval", "", True),
    ("ServerDatacenter", "Windows Server 2022 Datacenter Evaluation (Desktop Experience)", True),
    ("ServerStandard", "Windows Server 2022 Standard (Desktop Experience)", False),
    ("ServerDatacenter", "", False),
])
def test_evaluation_media_from_install_wim_metadata(edition_id: str, display: str,
                                                    evaluation: bool) -> None:
    image = WimImage(index=1, name="Windows Server 2022 SERVERSTANDARD", display_name=display,
                     edition_id=edition_id, build=20348)
    assert image.evaluation is evaluation
    if evaluation:
        windows_setup.check_licence(image, None)
        with pytest.raises(InputError, match=r"evaluation media.*without a product key"):
            windows_setup.check_licence(image, KEY)
    else:
        windows_setup.check_licence(image, KEY)
        with pytest.raises(InputError) as err:
            windows_setup.check_licence(image, None)
        assert "product-key page" in err.value.problem
        assert "--product-key-env" in err.value.fix


def test_server_2016_uses_its_driver_folders() -> None:
    root = render(WindowsVersion.WS2016, Firmware.BIOS)
    paths = [p.text or "" for p in root.iterfind(".//u:DriverPaths/u:PathAndCredentials/u:Path",
                                                 NS)]
    assert paths and all("\\2k16\\amd64" in p for p in paths)


def test_selector_and_settings_errors() -> None:
    with pytest.raises(InputError, match="exactly one"):
        ImageSelector(name="x", index=1)
    with pytest.raises(InputError, match="exactly one"):
        ImageSelector()
    assert ImageSelector.parse("3") == ImageSelector(index=3)
    assert ImageSelector.parse("Windows Server 2022 SERVERSTANDARD").name is not None
    with pytest.raises(InputError, match="password is empty"):
        UnattendSettings(WindowsVersion.WS2022, Firmware.UEFI, image_of(WindowsVersion.WS2022),
                         "")
    settings = UnattendSettings(WindowsVersion.WS2022, Firmware.UEFI,
                                image_of(WindowsVersion.WS2022), PASSWORD)
    assert PASSWORD not in repr(settings)


def test_template_itself_is_well_formed() -> None:
    ET.fromstring(windows_setup.TEMPLATE.read_bytes())
