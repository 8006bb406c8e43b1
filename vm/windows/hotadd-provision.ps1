<#
  hotadd guest provisioning: runs once, at the first (auto)logon after an unattended install,
  started by Autounattend.xml's FirstLogonCommands from the provisioning ISO.

  Runs in: Windows Server 2016/2019/2022/2025, Windows PowerShell 5.1, as Administrator.
  Does, in this order: WinRM first (so a later step that hangs can be examined over WinRM)
  for a *lab* guest reached only through a 127.0.0.1 host forward (HTTP listener on 5985,
  Basic auth and AllowUnencrypted on; NTLM stays enabled, it is the Windows default; firewall
  rule; plain automatic start), LocalAccountTokenFilterPolicy, virtio drivers into the driver
  store, network profile Private, test signing on, crash settings that keep a bugcheck on
  screen, no automatic updates, the Server 2016 ACPI0010 workaround, removal of the cached
  answer file, removal of the AutoLogon password (its own last step), then writes the marker
  C:\ProgramData\HotAdd\provisioned.json and reboots (test signing needs the reboot).
  The harness waits for WinRM *and* a boot newer than the marker before it trusts the image.
#>
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$stateDir = Join-Path $env:ProgramData 'HotAdd'
New-Item -ItemType Directory -Force -Path $stateDir | Out-Null
Start-Transcript -Path (Join-Path $stateDir 'provision.log') -Append | Out-Null
$media = $PSScriptRoot
$steps = [ordered]@{}

function Invoke-Step {
    param([string]$Name, [scriptblock]$Body)
    Write-Output "hotadd-provision: $Name"
    try {
        & $Body
        $steps[$Name] = 'ok'
    } catch {
        $steps[$Name] = "failed: $($_.Exception.Message)"
        Write-Warning "$Name failed: $($_.Exception.Message)"
    }
}

function Invoke-Native {
    param([string]$Exe, [string[]]$Arguments)
    # Windows PowerShell 5.1 turns native stderr into terminating errors under 'Stop'
    $ErrorActionPreference = 'Continue'
    $out = & $Exe @Arguments 2>&1 | Out-String
    if ($LASTEXITCODE -ne 0) {
        throw "$Exe $($Arguments -join ' ') exited $LASTEXITCODE`: $out"
    }
    $out
}

$build = [int](Get-ItemProperty 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion').CurrentBuildNumber

# WinRM first: if a later step hangs, the guest can still be examined over WinRM.
Invoke-Step 'winrm' {
    # Lab only: Basic over HTTP is acceptable because the host forwards 5985 to 127.0.0.1 alone.
    Enable-PSRemoting -Force -SkipNetworkProfileCheck | Out-Null  # service, listener, rules
    if (-not (Get-ChildItem -Path WSMan:\localhost\Listener |
              Where-Object { $_.Keys -contains 'Transport=HTTP' })) {
        New-Item -Path WSMan:\localhost\Listener -Transport HTTP -Address * -Force | Out-Null
    }
    Set-Item -Path WSMan:\localhost\Service\Auth\Basic -Value $true
    Set-Item -Path WSMan:\localhost\Service\AllowUnencrypted -Value $true
    Set-Item -Path WSMan:\localhost\MaxTimeoutms -Value 1800000
    Set-Item -Path WSMan:\localhost\Shell\MaxMemoryPerShellMB -Value 2048
    # plain automatic start: Enable-PSRemoting may leave it on delayed start, and PowerShell
    # 5.1's Set-Service cannot clear DelayedAutoStart (sc.exe can)
    Invoke-Native 'sc.exe' @('config', 'WinRM', 'start=', 'auto') | Out-Null
    if (-not (Get-NetFirewallRule -Name 'hotadd-winrm-http' -ErrorAction SilentlyContinue)) {
        New-NetFirewallRule -Name 'hotadd-winrm-http' -DisplayName 'hotadd WinRM HTTP (lab)' `
            -Direction Inbound -Protocol TCP -LocalPort 5985 -Action Allow -Profile Any | Out-Null
    }
    Restart-Service -Name WinRM
}

Invoke-Step 'local account token filter' {
    New-ItemProperty -Force -Path 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Policies\System' `
        -Name LocalAccountTokenFilterPolicy -PropertyType DWord -Value 1 | Out-Null
}

Invoke-Step 'virtio drivers' {
    $drivers = Join-Path $media '$WinPEDriver$'
    if (Test-Path -LiteralPath $drivers) {
        # pnputil exits non-zero when some driver needs no install (already present): log, go on
        & pnputil.exe /add-driver (Join-Path $drivers '*.inf') /subdirs /install | Out-Host
    }
}

Invoke-Step 'network profile private' {
    $deadline = (Get-Date).AddMinutes(2)
    while (-not (Get-NetConnectionProfile -ErrorAction SilentlyContinue)) {
        if ((Get-Date) -gt $deadline) { throw 'no network connection profile after 2 minutes' }
        Start-Sleep -Seconds 2
    }
    Get-NetConnectionProfile | Set-NetConnectionProfile -NetworkCategory Private
}


Invoke-Step 'test signing' {
    Invoke-Native 'bcdedit.exe' @('/set', '{current}', 'testsigning', 'on') | Out-Null
}

Invoke-Step 'crash settings' {
    $cc = 'HKLM:\SYSTEM\CurrentControlSet\Control\CrashControl'
    Set-ItemProperty -Path $cc -Name AutoReboot -Value 0      # keep the bugcheck on screen
    Set-ItemProperty -Path $cc -Name CrashDumpEnabled -Value 7  # automatic memory dump
}

Invoke-Step 'no automatic updates' {
    $au = 'HKLM:\SOFTWARE\Policies\Microsoft\Windows\WindowsUpdate\AU'
    if (-not (Test-Path -Path $au)) { New-Item -Force -Path $au | Out-Null }  # -Force: parents
    New-ItemProperty -Force -Path $au -Name NoAutoUpdate -PropertyType DWord -Value 1 | Out-Null
}

Invoke-Step 'power' {
    Invoke-Native 'powercfg.exe' @('/hibernate', 'off') | Out-Null
    Invoke-Native 'powercfg.exe' @('/change', 'monitor-timeout-ac', '0') | Out-Null
    Invoke-Native 'powercfg.exe' @('/change', 'standby-timeout-ac', '0') | Out-Null
}

if ($build -eq 14393) {
    # Server 2016: "HID Button over Interrupt" claims ACPI0010 (the processor container), so
    # hot-added CPUs go unseen. Rebind the device to machine.inf, as `devcon update` would.
    Invoke-Step 'server 2016 ACPI0010 workaround' {
        Add-Type -Namespace HotAdd -Name NewDev -MemberDefinition @'
[DllImport("newdev.dll", CharSet = CharSet.Unicode, SetLastError = true)]
public static extern bool UpdateDriverForPlugAndPlayDevicesW(IntPtr hwnd, string hardwareId,
    string fullInfPath, uint installFlags, out bool rebootRequired);
'@
        $reboot = $false
        $inf = Join-Path $env:SystemRoot 'INF\machine.inf'
        # INSTALLFLAG_FORCE = 1
        if (-not [HotAdd.NewDev]::UpdateDriverForPlugAndPlayDevicesW([IntPtr]::Zero,
                'ACPI\VEN_ACPI&DEV_0010', $inf, 1, [ref]$reboot)) {
            $code = [Runtime.InteropServices.Marshal]::GetLastWin32Error()
            throw "UpdateDriverForPlugAndPlayDevices(ACPI\VEN_ACPI&DEV_0010, machine.inf) failed: $code"
        }
    }
}


Invoke-Step 'forget the answer file' {
    # The golden image should keep only the account's hash: no cached answer file (it holds
    # the encoded password and any product key).
    foreach ($f in @('Panther\unattend.xml', 'Panther\Unattend\unattend.xml', 'Panther\Autounattend.xml')) {
        Remove-Item -Force -ErrorAction SilentlyContinue -LiteralPath (Join-Path $env:SystemRoot $f)
    }
}

# Last step of its own: no AutoLogon secret (nothing needs an interactive logon once
# provisioning ran); whatever failed before it, the secret still goes.
Invoke-Step 'forget the autologon password' {
    $winlogon = 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion\Winlogon'
    Set-ItemProperty -Path $winlogon -Name AutoAdminLogon -Value '0'
    foreach ($name in 'DefaultPassword', 'AutoLogonCount') {
        Remove-ItemProperty -Path $winlogon -Name $name -ErrorAction SilentlyContinue
    }
    Add-Type -Namespace HotAdd -Name Lsa -MemberDefinition @'
[StructLayout(LayoutKind.Sequential, CharSet = CharSet.Unicode)]
public struct LSA_UNICODE_STRING { public ushort Length; public ushort MaximumLength; public string Buffer; }
[StructLayout(LayoutKind.Sequential)]
public struct LSA_OBJECT_ATTRIBUTES { public int Length; public IntPtr RootDirectory; public IntPtr ObjectName; public uint Attributes; public IntPtr SecurityDescriptor; public IntPtr SecurityQualityOfService; }
[DllImport("advapi32.dll")] public static extern uint LsaOpenPolicy(IntPtr system, ref LSA_OBJECT_ATTRIBUTES attributes, uint access, out IntPtr handle);
[DllImport("advapi32.dll")] public static extern uint LsaStorePrivateData(IntPtr handle, ref LSA_UNICODE_STRING key, IntPtr data);
[DllImport("advapi32.dll")] public static extern uint LsaClose(IntPtr handle);
'@
    # AutoLogon from an answer file keeps the password as the LSA secret DefaultPassword
    $attributes = New-Object 'HotAdd.Lsa+LSA_OBJECT_ATTRIBUTES'
    $policy = [IntPtr]::Zero
    $status = [HotAdd.Lsa]::LsaOpenPolicy([IntPtr]::Zero, [ref]$attributes, 0x000F0FFF, [ref]$policy)  # POLICY_ALL_ACCESS
    if ($status -ne 0) { throw "LsaOpenPolicy failed: 0x$('{0:X8}' -f $status)" }
    try {
        $key = New-Object 'HotAdd.Lsa+LSA_UNICODE_STRING'
        $key.Buffer = 'DefaultPassword'
        $key.Length = [uint16]($key.Buffer.Length * 2)
        $key.MaximumLength = [uint16]($key.Length + 2)
        [void][HotAdd.Lsa]::LsaStorePrivateData($policy, [ref]$key, [IntPtr]::Zero)  # NULL deletes
    } finally {
        [void][HotAdd.Lsa]::LsaClose($policy)
    }
}

$marker = [ordered]@{
    provisioned_utc = (Get-Date).ToUniversalTime().ToString('o')
    build           = $build
    steps           = $steps
}
$marker | ConvertTo-Json -Depth 4 | Set-Content -Encoding UTF8 -Path (Join-Path $stateDir 'provisioned.json')
Write-Output 'hotadd-provision: done, rebooting'
Stop-Transcript | Out-Null
& shutdown.exe /r /t 10 /c 'hotadd provisioning finished' /d p:4:1
