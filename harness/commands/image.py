"""`hotadd image build`: a Windows Server golden image from an installation ISO.

The password and any product key are read from environment variables (never command-line
arguments, which other users could read in the process list).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.errors import Outcome, exit_code
from harness.host.domain import Firmware
from harness.progress import Progress


def _build(args: argparse.Namespace) -> int:
    from harness.guests import windows_image, windows_setup

    spec = windows_image.ImageBuildSpec(
        windows_iso=args.iso, virtio_iso=args.virtio_iso,
        image=windows_setup.ImageSelector.parse(args.edition), output=args.output,
        password="" if args.print_xml else windows_setup.password_from_env(args.password_env),
        product_key=(windows_setup.product_key_from_env(args.product_key_env)
                     if args.product_key_env and not args.print_xml else None),
        firmware=Firmware(args.firmware), disk_gib=args.disk_gib, memory_mib=args.memory_mib,
        force_tcg=args.force_tcg, libvirt_uri=args.libvirt_uri, run_dir=args.run_dir,
        timeouts=windows_image.StageTimeouts(stall=args.stall_timeout),
        screenshot_every=args.screenshot_every, vnc=args.vnc,
    )
    if args.print_xml:
        print(windows_image.planned_installer_xml(spec))
        return exit_code(Outcome.PASS)
    manifest = windows_image.build_image(spec, Progress())
    print(f"golden image: {spec.output} (read-only; Windows Server {manifest.windows_version}, "
          f"{manifest.edition}); manifest {windows_image.manifest_path(spec.output)}")
    return exit_code(Outcome.PASS)


def _list(args: argparse.Namespace) -> int:
    from harness.guests import windows_setup

    windows_setup.check_readable_iso(args.iso, "Windows ISO")
    images = windows_setup.windows_iso_images(args.iso)  # reads the metadata, extracts nothing
    for img in images:
        licence = "evaluation" if img.evaluation else "needs --product-key-env"
        print(f"{img.index}\t{img.name}\t{img.edition_id}\t{img.installation_type}\t"
              f"{img.build or ''}\t{licence}")
    return exit_code(Outcome.PASS)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    image = subparsers.add_parser("image", help="build or inspect Windows golden images")
    actions = image.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build", help="install Windows Server unattended into a read-only golden qcow2",
        description="Install Windows Server from its ISO (unattended, needs KVM) into a golden "
                    "qcow2 with WinRM, test signing and a JSON manifest. The Administrator "
                    "password is read from the environment variable named by --password-env.")
    build.add_argument("--iso", type=Path, required=True, help="Windows Server ISO")
    build.add_argument("--virtio-iso", type=Path, required=True, help="virtio-win ISO")
    build.add_argument("--edition", required=True,
                       help='install.wim image name (e.g. "Windows Server 2022 SERVERDATACENTER")'
                            " or index; 'hotadd image list --iso X' shows them")
    build.add_argument("--output", type=Path, required=True, help="golden qcow2 to create")
    build.add_argument("--firmware", choices=[f.value for f in Firmware],
                       default=Firmware.UEFI.value, help="uefi (OVMF, no Secure Boot) or bios")
    build.add_argument("--disk-gib", type=int, default=40, help="disk size (default 40)")
    build.add_argument("--memory-mib", type=int, default=4096, help="installer RAM")
    build.add_argument("--force-tcg", action="store_true",
                       help="install without KVM (takes many hours)")
    build.add_argument("--libvirt-uri", default=None, help="default: embedded QEMU driver")
    build.add_argument("--run-dir", type=Path, default=None,
                       help="logs and screenshots (default: OUTPUT.build/)")
    build.add_argument("--stall-timeout", type=float, default=600.0, metavar="SECONDS",
                       help="stop when the disk has not grown for this long before WinRM "
                            "answers: a missed boot key, a Setup page waiting for input "
                            "(default 600; raise it for TCG or slow storage)")
    build.add_argument("--screenshot-every", type=float, default=30.0, metavar="SECONDS",
                       help="save the screen into RUN_DIR/screens/ this often (default 30)")
    build.add_argument("--vnc", action="store_true",
                       help="show the installer's screen on a VNC port of 127.0.0.1 (printed "
                            "with the command to view it)")
    build.add_argument("--password-env", default="HOTADD_WINDOWS_PASSWORD",
                       help="environment variable holding the Administrator password")
    build.add_argument("--product-key-env", metavar="NAME", default=None,
                       help="environment variable holding the product key, for media other "
                            "than evaluation (whose Setup would stop at the key page)")
    build.add_argument("--print-xml", action="store_true",
                       help="print the installer domain XML and stop: nothing is read, created "
                            "or started, the ISOs need not exist, no password is needed (KVM "
                            "unless --force-tcg)")
    build.set_defaults(func=_build)
    listing = actions.add_parser("list", help="list the images inside a Windows ISO")
    listing.add_argument("--iso", type=Path, required=True, help="Windows Server ISO")
    listing.set_defaults(func=_list)
