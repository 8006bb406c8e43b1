<#
  hotadd probe control: functions the harness calls in the Windows guest (and that a person can
  dot-source in a lab guest: `. .\hotadd-probe.ps1; Get-HotAddPreflight`).

  Runs in: Windows Server 2016-2025, Windows PowerShell 5.1, as Administrator, over WinRM or
  SSH. The harness sends this file followed by one call line; every function prints exactly one
  line of compact JSON (the result) and throws on a real failure, so the caller gets a non-zero
  exit code with the message on stderr. The service, parameter names and record path are the
  driver's contract (driver/probe_public.h): service HotAddProbe, Parameters values Flags,
  VetoIndex, VetoStatus, VetoDuringReplay (REG_DWORD), records in
  C:\ProgramData\HotAddProbe\records.jsonl (truncated by every load).
#>
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'  # progress records reach a remote stderr as CLIXML
Set-StrictMode -Version 2

$HotAddService = 'HotAddProbe'
$HotAddRecords = 'C:\ProgramData\HotAddProbe\records.jsonl'
$HotAddCertSubject = 'CN=hotadd test signing (lab only)'

function Write-HotAddResult {
    param([Parameter(Mandatory)][AllowEmptyCollection()][System.Collections.IDictionary]$Result)
    Write-Output (ConvertTo-Json -InputObject $Result -Compress -Depth 4)
}

function Invoke-HotAddNative {
    # Run a native tool and return exit code and output; Windows PowerShell 5.1 would turn
    # native stderr into terminating errors under 'Stop'.
    param([string]$Exe, [string[]]$Arguments)
    $ErrorActionPreference = 'Continue'
    $out = & $Exe @Arguments 2>&1 | Out-String
    [pscustomobject]@{ Code = $LASTEXITCODE; Output = $out.Trim() }
}

function Find-HotAddMedia {
    # A file name on whichever drive holds it (the attached ISO's letter varies), or a full path.
    param([Parameter(Mandatory)][string]$Name)
    if ([IO.Path]::IsPathRooted($Name)) {
        if (Test-Path -LiteralPath $Name) { return $Name }
        throw "not found in the guest: $Name"
    }
    foreach ($drive in [IO.DriveInfo]::GetDrives()) {
        if (-not $drive.IsReady) { continue }
        $candidate = Join-Path $drive.RootDirectory.FullName $Name
        if (Test-Path -LiteralPath $candidate) { return $candidate }
    }
    throw "no drive holds $Name (is the driver ISO attached?)"
}

function Get-HotAddSigningCertificate {
    # A self-signed code-signing certificate, trusted machine-wide (test mode accepts any
    # signature, trusting it as well keeps Get-AuthenticodeSignature and tools quiet).
    $cert = Get-ChildItem Cert:\LocalMachine\My -CodeSigningCert |
        Where-Object { $_.Subject -eq $HotAddCertSubject } | Select-Object -First 1
    if (-not $cert) {
        $cert = New-SelfSignedCertificate -Type CodeSigningCert -Subject $HotAddCertSubject `
            -CertStoreLocation Cert:\LocalMachine\My -HashAlgorithm SHA256 -KeyExportPolicy Exportable `
            -NotAfter (Get-Date).AddYears(5)
        foreach ($storeName in 'Root', 'TrustedPublisher') {
            $store = New-Object System.Security.Cryptography.X509Certificates.X509Store($storeName, 'LocalMachine')
            $store.Open('ReadWrite')
            $store.Add($cert)
            $store.Close()
        }
    }
    $cert
}

function Get-HotAddServiceState {
    $drv = Get-CimInstance -ClassName Win32_SystemDriver -Filter "Name='$HotAddService'"
    if ($drv) { return [string]$drv.State }
    'Absent'
}

function Install-HotAddProbe {
    # Copy the driver into System32\drivers, sign it in the guest if unsigned, (re)create the
    # kernel service with demand start.
    param([Parameter(Mandatory)][string]$Source)
    $src = Find-HotAddMedia -Name $Source
    if ((Get-HotAddServiceState) -eq 'Running') {
        Invoke-HotAddNative 'sc.exe' @('stop', $HotAddService) | Out-Null
        Wait-HotAddServiceState -State 'Stopped' -Seconds 60
    }
    $target = Join-Path $env:SystemRoot 'System32\drivers\HotAddProbe.sys'
    Copy-Item -LiteralPath $src -Destination $target -Force
    Set-ItemProperty -LiteralPath $target -Name IsReadOnly -Value $false
    $signature = Get-AuthenticodeSignature -FilePath $target
    $signedHere = $false
    if ($signature.Status -eq 'NotSigned') {
        $cert = Get-HotAddSigningCertificate
        $result = Set-AuthenticodeSignature -FilePath $target -Certificate $cert -HashAlgorithm SHA256
        if ($result.Status -ne 'Valid') {
            throw "signing $target failed: $($result.Status) $($result.StatusMessage)"
        }
        $signedHere = $true
        $signature = Get-AuthenticodeSignature -FilePath $target
    }
    # An existing service is reconfigured, not deleted: a delete stays pending while anything
    # holds a handle to it, and the create after it would then fail.
    $verb = 'create'
    if ((Get-HotAddServiceState) -ne 'Absent') { $verb = 'config' }
    $sc = Invoke-HotAddNative 'sc.exe' @($verb, $HotAddService, 'type=', 'kernel',
        'start=', 'demand', 'error=', 'normal', 'binPath=', $target, 'DisplayName=', 'HotAdd probe')
    if ($sc.Code -ne 0) { throw "sc.exe $verb $HotAddService failed ($($sc.Code)): $($sc.Output)" }
    Write-HotAddResult ([ordered]@{
        service = $HotAddService; path = $target; source = $src
        signed_in_guest = $signedHere; signature = [string]$signature.Status
        signer = $(if ($signature.SignerCertificate) { $signature.SignerCertificate.Subject } else { '' })
    })
}

function Set-HotAddProbeParameters {
    # Write the Parameters key; a value given as -1 is removed (the driver's default applies).
    param([long]$Flags = 1, [long]$VetoIndex = -1, [long]$VetoStatus = -1, [long]$VetoDuringReplay = -1)
    $key = "HKLM:\SYSTEM\CurrentControlSet\Services\$HotAddService\Parameters"
    # (New-Item -Force on an existing registry key would wipe the key first)
    if (-not (Test-Path -Path $key)) { New-Item -Path $key | Out-Null }
    $values = [ordered]@{ Flags = $Flags; VetoIndex = $VetoIndex; VetoStatus = $VetoStatus; VetoDuringReplay = $VetoDuringReplay }
    foreach ($name in @($values.Keys)) {
        $value = $values[$name]
        if ($value -lt 0) {
            Remove-ItemProperty -Path $key -Name $name -ErrorAction SilentlyContinue
        } else {
            # REG_DWORD is signed in .NET: store the unsigned 32-bit pattern (NTSTATUS 0xC...)
            $dword = [BitConverter]::ToInt32([BitConverter]::GetBytes([uint32]$value), 0)
            New-ItemProperty -Path $key -Name $name -PropertyType DWord -Value $dword -Force | Out-Null
        }
    }
    $now = Get-ItemProperty -Path $key
    $shown = [ordered]@{}
    foreach ($name in @($values.Keys)) {
        if ($now.PSObject.Properties[$name]) {
            $shown[$name] = [BitConverter]::ToUInt32([BitConverter]::GetBytes([int]$now.$name), 0)
        }
    }
    Write-HotAddResult $shown
}

function Wait-HotAddServiceState {
    param([Parameter(Mandatory)][string]$State, [int]$Seconds = 60)
    $deadline = (Get-Date).AddSeconds($Seconds)
    while ((Get-HotAddServiceState) -ne $State) {
        if ((Get-Date) -gt $deadline) { throw "$HotAddService not $State after $Seconds s (now $(Get-HotAddServiceState))" }
        Start-Sleep -Milliseconds 200
    }
}

function Start-HotAddProbe {
    # Start the driver. A refused start is a result, not an error: the replay-veto scenario
    # expects DriverEntry to fail. The Win32 code of the failure is reported.
    $start = Invoke-HotAddNative 'sc.exe' @('start', $HotAddService)
    Start-Sleep -Milliseconds 200
    Write-HotAddResult ([ordered]@{
        started = ($start.Code -eq 0); code = $start.Code; state = Get-HotAddServiceState
        message = $start.Output
    })
}

function Stop-HotAddProbe {
    # Stop (unload) the driver: its unload routine deregisters the callback and flushes records.
    $stop = Invoke-HotAddNative 'sc.exe' @('stop', $HotAddService)
    if ($stop.Code -ne 0 -and $stop.Code -ne 1062) {  # 1062: not started
        throw "sc.exe stop $HotAddService failed ($($stop.Code)): $($stop.Output)"
    }
    Wait-HotAddServiceState -State 'Stopped' -Seconds 60
    Write-HotAddResult ([ordered]@{ stopped = $true; code = $stop.Code; state = Get-HotAddServiceState })
}

function Get-HotAddRecords {
    # The records file as text (for people in a lab guest; the harness fetches the file in
    # base64 chunks instead). Shared read: the driver may still be writing it.
    $text = ''
    $exists = Test-Path -LiteralPath $HotAddRecords
    if ($exists) {
        $f = [IO.File]::Open($HotAddRecords, 'Open', 'Read', 'ReadWrite')
        try { $text = (New-Object IO.StreamReader($f)).ReadToEnd() } finally { $f.Close() }
    }
    Write-HotAddResult ([ordered]@{ path = $HotAddRecords; exists = $exists; text = $text })
}

function Get-HotAddProcessorCount {
    # Run from a fresh process (a process started before a hot-add keeps its old view).
    Add-Type -Namespace HotAdd -Name Kernel32 -MemberDefinition @'
[DllImport("kernel32.dll")] public static extern uint GetActiveProcessorCount(ushort group);
'@
    $cs = Get-CimInstance -ClassName Win32_ComputerSystem
    Write-HotAddResult ([ordered]@{
        logical = [int]$cs.NumberOfLogicalProcessors
        active_all_groups = [int][HotAdd.Kernel32]::GetActiveProcessorCount(0xFFFF)
        environment = [Environment]::ProcessorCount
    })
}

function Get-HotAddPreflight {
    # Can this guest take CPU hot-add, and will it load a test-signed driver?
    Add-Type -Namespace HotAdd -Name Preflight -MemberDefinition @'
[DllImport("slc.dll", CharSet = CharSet.Unicode)]
public static extern int SLGetWindowsInformationDWORD(string name, out int value);
[DllImport("ntdll.dll")]
public static extern int NtQuerySystemInformation(int cls, byte[] info, int length, out int returned);
'@
    $cv = Get-ItemProperty 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion'
    # KUSER_SHARED_DATA.SharedDataFlags (0x7FFE02F0), bit 5 = DbgDynProcessorEnabled (re)
    $shared = [Runtime.InteropServices.Marshal]::ReadInt32([IntPtr]0x7FFE02F0)
    $licence = 0
    $slc = [HotAdd.Preflight]::SLGetWindowsInformationDWORD('Kernel-VirtualDynamicPartitioningSupported', [ref]$licence)
    # SystemCodeIntegrityInformation (103): { ULONG Length; ULONG Options }, 0x2 = TESTSIGN
    $ci = New-Object byte[] 8
    [BitConverter]::GetBytes([int]8).CopyTo($ci, 0)
    $got = 0
    $ntstatus = [HotAdd.Preflight]::NtQuerySystemInformation(103, $ci, 8, [ref]$got)
    $ciOptions = [BitConverter]::ToInt32($ci, 4)
    $secureBoot = $null
    try { $secureBoot = [bool](Confirm-SecureBootUEFI) } catch { $secureBoot = $null }
    $wdf = Get-Item -LiteralPath (Join-Path $env:SystemRoot 'System32\drivers\Wdf01000.sys') -ErrorAction SilentlyContinue
    # Virtualization-based security: 0 off, 1 enabled but not running, 2 running (not
    # supported together with CPU hot-add; the domain hides vmx/svm so it cannot start)
    $vbs = $null
    try {
        $dg = Get-CimInstance -Namespace 'root\Microsoft\Windows\DeviceGuard' -ClassName Win32_DeviceGuard -ErrorAction Stop
        $vbs = [int]$dg.VirtualizationBasedSecurityStatus
    } catch { $vbs = $null }
    Write-HotAddResult ([ordered]@{
        product = [string]$cv.ProductName; edition = [string]$cv.EditionID
        build = [int]$cv.CurrentBuildNumber
        installation_type = [string]$cv.InstallationType
        dyn_processor_enabled = [bool]($shared -band 0x20)
        licence_dynamic_partitioning = $(if ($slc -eq 0) { $licence } else { $null })
        test_signing = $(if ($ntstatus -eq 0) { [bool]($ciOptions -band 0x2) } else { $null })
        secure_boot = $secureBoot
        wdf_version = $(if ($wdf) { [string]$wdf.VersionInfo.ProductVersion } else { '' })
        vbs_status = $vbs
        logical_processors = [int](Get-CimInstance -ClassName Win32_ComputerSystem).NumberOfLogicalProcessors
        last_boot_utc = (Get-CimInstance -ClassName Win32_OperatingSystem).LastBootUpTime.ToUniversalTime().ToString('o')
    })
}

function Get-HotAddProvisioning {
    # The provisioning marker and the current boot time: the image is ready when the boot is
    # newer than the marker (provisioning ends with the reboot test signing needs).
    $path = Join-Path $env:ProgramData 'HotAdd\provisioned.json'
    $marker = $null
    if (Test-Path -LiteralPath $path) { $marker = Get-Content -Raw -LiteralPath $path | ConvertFrom-Json }
    Write-HotAddResult ([ordered]@{
        marker = $marker
        last_boot_utc = (Get-CimInstance -ClassName Win32_OperatingSystem).LastBootUpTime.ToUniversalTime().ToString('o')
    })
}
