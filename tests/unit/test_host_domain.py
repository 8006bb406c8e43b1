"""Domain specs and the XML they become: validated before libvirt, and by libvirt's schema."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.host.accel import resolve
from harness.host.domain import (
    QEMU_NS,
    Accelerator,
    Cdrom,
    DirectBoot,
    Disk,
    DiskBus,
    DomainSpec,
    Firmware,
    Forward,
    GuestOS,
    Topology,
    VcpuPlan,
    hyperv_enlightenments,
    to_xml,
)

ACCELERATORS = [Accelerator.KVM, Accelerator.TCG]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("kernel", "initrd", "disk.qcow2", "install.iso", "OVMF_VARS.fd"):
        out[name] = tmp_path / name
        out[name].write_bytes(b"x")
    return out


def windows_spec(files: dict[str, Path], accel: Accelerator = Accelerator.TCG) -> DomainSpec:
    return DomainSpec(
        name="hotadd-win-0001", vcpus=VcpuPlan(Topology(sockets=2, cores=4), boot=2),
        guest_os=GuestOS.WINDOWS, serial_log=files["kernel"].parent / "serial.log",
        memory_mib=4096, firmware=Firmware.UEFI, accelerator=accel, nvram=files["OVMF_VARS.fd"],
        disks=(Disk(files["disk.qcow2"], DiskBus.SATA),), cdroms=(Cdrom(files["install.iso"]),),
        forwards=(Forward(5985, 40000), Forward(22, 40001)))


def linux_spec(files: dict[str, Path]) -> DomainSpec:
    return DomainSpec(
        name="hotadd-ref-0001", vcpus=VcpuPlan(Topology(cores=4), boot=1),
        guest_os=GuestOS.REFERENCE,
        serial_log=files["kernel"].parent / "serial.log",
        direct_boot=DirectBoot(files["kernel"], files["initrd"], "console=ttyS0"),
        forwards=(Forward(22, 40002),))


@pytest.mark.parametrize("make", [windows_spec, linux_spec], ids=["windows", "linux"])
def test_xml_passes_libvirt_schema(make, files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    xml_file = tmp_path / "domain.xml"
    xml_file.write_text(to_xml(make(files)))
    proc = subprocess.run(["virt-xml-validate", str(xml_file), "domain"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_vcpus_boot_ones_cold_plugged_rest_hotpluggable(files) -> None:  # type: ignore[no-untyped-def]
    root = ET.fromstring(to_xml(windows_spec(files)))
    vcpu = root.find("vcpu")
    assert vcpu is not None and vcpu.text == "8" and vcpu.get("current") == "2"
    states = [(v.get("id"), v.get("enabled"), v.get("hotpluggable"))
              for v in root.iterfind("vcpus/vcpu")]
    assert states[:2] == [("0", "yes", "no"), ("1", "yes", "no")]
    assert all(e == "no" and h == "yes" for _, e, h in states[2:]) and len(states) == 8
    topo = root.find("cpu/topology")
    assert topo is not None and (topo.get("sockets"), topo.get("cores")) == ("2", "4")


def test_windows_profile_devices(files) -> None:  # type: ignore[no-untyped-def]
    root = ET.fromstring(to_xml(windows_spec(files)))
    assert [p.get("model") for p in root.iterfind("devices/panic")] == ["hyperv"]
    assert root.findtext("on_crash") == "preserve"
    loader = root.find("os/loader")
    assert loader is not None and loader.get("secure") == "no"
    assert root.findtext("os/nvram") == str(files["OVMF_VARS.fd"])
    hv = {el.tag for el in root.iterfind("features/hyperv/*")}
    assert hv == set(hyperv_enlightenments(Accelerator.TCG)) and "vpindex" not in hv
    assert root.find("devices/video") is not None


@pytest.mark.parametrize("accel", ACCELERATORS, ids=lambda a: a.value)
def test_windows_cpu_hides_nested_virtualisation_and_sgx(files, accel: Accelerator) -> None:  # type: ignore[no-untyped-def]
    """host-passthrough would hand vmx (VBS: unsupported with CPU hot-add) and sgx/sgxlc
    (hot-add crash on OVMF without SMM CPU hot-plug, edk2 #11188) to Windows."""
    root = ET.fromstring(to_xml(windows_spec(files, accel)))
    disabled = {f.get("name") for f in root.iterfind("cpu/feature")
                if f.get("policy") == "disable"}
    assert {"vmx", "svm", "sgx", "sgxlc"} <= disabled
    assert root.find("cpu/feature[@policy='require']") is None
    linux = ET.fromstring(to_xml(linux_spec(files)))
    assert linux.find("cpu/feature") is None


@pytest.mark.parametrize("accel", ACCELERATORS, ids=lambda a: a.value)
def test_windows_always_has_a_hyperv_enlightenment(files, accel: Accelerator) -> None:  # type: ignore[no-untyped-def]
    """QEMU sets the "dynamic partitioning available" CPUID bit only with some Hyper-V
    enlightenment on; without it Windows never schedules on hot-added CPUs."""
    assert hyperv_enlightenments(accel)
    root = ET.fromstring(to_xml(windows_spec(files, accel)))
    on = [el for el in root.iterfind("features/hyperv/*") if el.get("state") == "on"]
    assert on, "a Windows domain without Hyper-V enlightenments ignores hot-added CPUs"


@pytest.mark.parametrize("make", ["windows", "linux"])
def test_guest_clock_is_utc(files, make: str) -> None:  # type: ignore[no-untyped-def]
    """The answer file sets Windows' time zone to UTC: a localtime RTC would put the guest
    off by the host's UTC offset."""
    spec = windows_spec(files) if make == "windows" else linux_spec(files)
    assert ET.fromstring(to_xml(spec)).find("clock").get("offset") == "utc"  # type: ignore[union-attr]


def test_kvm_gets_the_full_enlightenment_set(files) -> None:  # type: ignore[no-untyped-def]
    root = ET.fromstring(to_xml(windows_spec(files, Accelerator.KVM)))
    hv = {el.tag for el in root.iterfind("features/hyperv/*")}
    assert {"vpindex", "synic", "stimer"} <= hv
    assert root.get("type") == "kvm"
    cpu = root.find("cpu")
    assert cpu is not None and cpu.get("mode") == "host-passthrough"


def test_linux_profile_uses_pvpanic_and_direct_boot(files) -> None:  # type: ignore[no-untyped-def]
    root = ET.fromstring(to_xml(linux_spec(files)))
    assert [p.get("model") for p in root.iterfind("devices/panic")] == ["isa"]
    assert root.findtext("os/kernel") == str(files["kernel"])
    assert root.find("features/hyperv") is None


def test_forwards_bind_loopback_only(files) -> None:  # type: ignore[no-untyped-def]
    root = ET.fromstring(to_xml(windows_spec(files)))
    args = [a.get("value", "") for a in root.iter(f"{{{QEMU_NS}}}arg")]
    netdev = next(a for a in args if a.startswith("user,"))
    fwds = [p for p in netdev.split(",") if p.startswith("hostfwd=")]
    assert fwds == ["hostfwd=tcp:127.0.0.1:40000-:5985", "hostfwd=tcp:127.0.0.1:40001-:22"]


@pytest.mark.parametrize(("topology", "boot", "maximum", "needle"), [
    (Topology(sockets=2, cores=2), 2, 8, "!= topology"),
    (Topology(cores=4), 0, None, "between 1 and max"),
    (Topology(cores=4), 5, None, "between 1 and max"),
])
def test_impossible_vcpu_plans_are_input_errors(topology, boot, maximum, needle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=needle) as info:
        VcpuPlan(topology, boot=boot, max=maximum)
    assert info.value.fix


def test_topology_fields_must_be_positive() -> None:
    with pytest.raises(InputError, match="threads must be >= 1"):
        Topology(threads=0)


def test_spec_refuses_what_libvirt_would_choke_on(files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = VcpuPlan(Topology(cores=2), boot=1)
    base = {"vcpus": plan, "guest_os": GuestOS.REFERENCE, "serial_log": tmp_path / "s.log",
            "direct_boot": DirectBoot(files["kernel"], files["initrd"], "")}
    with pytest.raises(InputError, match="run prefix"):
        DomainSpec(name="mine", **base)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="resolved"):
        DomainSpec(name="hotadd-x", accelerator=Accelerator.AUTO, **base)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="NVRAM"):
        DomainSpec(name="hotadd-x", firmware=Firmware.UEFI, **base)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="does not exist"):
        DomainSpec(name="hotadd-x", vcpus=plan, guest_os=GuestOS.REFERENCE,
                   serial_log=tmp_path / "s.log", disks=(Disk(tmp_path / "missing.qcow2"),))


def test_auto_accelerator_is_honest_here() -> None:
    """auto picks kvm only with both /dev/kvm and vmx/svm; an explicit kvm that can't work is
    refused with the reason."""
    has_virt = any(flag in Path("/proc/cpuinfo").read_text().split() for flag in ("vmx", "svm"))
    choice = resolve(Accelerator.AUTO)
    if Path("/dev/kvm").exists() and has_virt:
        assert choice.accelerator is Accelerator.KVM
    else:
        assert choice.accelerator is Accelerator.TCG
        with pytest.raises(InputError, match="KVM was requested"):
            resolve(Accelerator.KVM)
