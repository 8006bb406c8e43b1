<#
.SYNOPSIS
    Test-sign HotAddProbe.sys with a self-signed code-signing certificate.

.DESCRIPTION
    sign-test.ps1 - runs on Windows (the build box or the test guest), as Administrator.
    Creates, or reuses, the certificate "CN=HotAddProbe Test" in LocalMachine\My, exports it to
    HotAddProbe.cer beside the driver, trusts it (LocalMachine Root and TrustedPublisher) so
    the signature verifies, and embeds a SHA-256 Authenticode signature in the .sys: with
    signtool.exe when the WDK/SDK puts it on PATH, else with Set-AuthenticodeSignature.
    Windows loads a test-signed driver only in test mode: Secure Boot off,
    `bcdedit /set testsigning on`, reboot. Run it in the guest if the build box is not one.

.EXAMPLE
    powershell -ExecutionPolicy Bypass -File sign-test.ps1 -Driver C:\HotAddProbe\HotAddProbe.sys
#>
param(
    [Parameter(Mandatory = $true)][string]$Driver,
    [string]$Subject = 'CN=HotAddProbe Test'
)
$ErrorActionPreference = 'Stop'

$driverPath = (Resolve-Path -LiteralPath $Driver).Path
$cert = Get-ChildItem Cert:\LocalMachine\My |
    Where-Object { $_.Subject -eq $Subject -and $_.HasPrivateKey } |
    Select-Object -First 1
if (-not $cert) {
    $cert = New-SelfSignedCertificate -Type CodeSigningCert -Subject $Subject `
        -CertStoreLocation Cert:\LocalMachine\My -HashAlgorithm SHA256 `
        -NotAfter (Get-Date).AddYears(5)
}

$cer = Join-Path (Split-Path -Parent $driverPath) 'HotAddProbe.cer'
Export-Certificate -Cert $cert -FilePath $cer | Out-Null
foreach ($store in 'Root', 'TrustedPublisher') {
    Import-Certificate -FilePath $cer -CertStoreLocation "Cert:\LocalMachine\$store" | Out-Null
}

$signtool = Get-Command signtool.exe -ErrorAction SilentlyContinue
if ($signtool) {
    & $signtool.Source sign /fd SHA256 /sm /s My /sha1 $cert.Thumbprint $driverPath
    if ($LASTEXITCODE -ne 0) { throw "signtool failed with exit code $LASTEXITCODE" }
} else {
    $result = Set-AuthenticodeSignature -FilePath $driverPath -Certificate $cert -HashAlgorithm SHA256
    if ($result.Status -ne 'Valid') {
        throw "Set-AuthenticodeSignature: $($result.Status): $($result.StatusMessage)"
    }
}
Write-Output "signed $driverPath (certificate $($cert.Thumbprint), exported to $cer)"
