<#
.SYNOPSIS
  Checks on a real Windows machine what kvvm's Windows tests cannot show under Wine: that each observed
  certificate is in its store with its private key, its intermediates in the location's CA store, and its root
  not added to Root; and the worker's service's recovery actions.

.DESCRIPTION
  Wine's crypt32 implements the import and the stores, and kvvm's tests check those under Wine. It does not keep
  one key container per PFX (every imported key lands in the same one), its LocalMachine key look-ups do not
  work, and it ignores key flags. This script checks those parts where they are real. Run it in an elevated
  PowerShell on the VM after kvvm has installed the certificates, with the thumbprints `kvvm status --json` (or
  the status file) reports.

.EXAMPLE
  .\verify.ps1 -Location LocalMachine -Store MY -Thumbprint 3D41ED6F291657224B7D28860E96146D5A41A55C
#>
param(
    [ValidateSet('LocalMachine', 'CurrentUser')]
    [string] $Location = 'LocalMachine',
    [string] $Store = 'MY',
    [Parameter(Mandatory = $true)]
    [string[]] $Thumbprint,
    # The worker's Windows service, whose recovery actions Wine's service manager cannot report.
    [string] $Service = 'kvvm'
)

$failed = 0
function Check([bool] $ok, [string] $what) {
    if ($ok) { Write-Output "ok    $what" } else { Write-Output "FAIL  $what"; $script:failed++ }
}

foreach ($t in $Thumbprint) {
    $t = $t.ToUpperInvariant()
    $cert = Get-Item -Path "Cert:\$Location\$Store\$t" -ErrorAction SilentlyContinue
    Check ($null -ne $cert) "$t is in $Location\$Store"
    if ($null -eq $cert) { continue }
    Check $cert.HasPrivateKey "$t has its private key"
    # The key must be the leaf's own: sign with it and verify with the certificate's public key.
    $key = [System.Security.Cryptography.X509Certificates.RSACertificateExtensions]::GetRSAPrivateKey($cert)
    if ($null -eq $key) {
        $key = [System.Security.Cryptography.X509Certificates.ECDsaCertificateExtensions]::GetECDsaPrivateKey($cert)
    }
    Check ($null -ne $key) "$t's private key can be opened by this account"
    if ($null -ne $key) {
        $data = [System.Text.Encoding]::UTF8.GetBytes('kvvm verify')
        if ($key -is [System.Security.Cryptography.RSA]) {
            $sig = $key.SignData($data, 'SHA256', [System.Security.Cryptography.RSASignaturePadding]::Pkcs1)
            $pub = [System.Security.Cryptography.X509Certificates.RSACertificateExtensions]::GetRSAPublicKey($cert)
            Check ($pub.VerifyData($data, $sig, 'SHA256', [System.Security.Cryptography.RSASignaturePadding]::Pkcs1)) "$t's key matches its certificate"
        } else {
            $sig = $key.SignData($data, 'SHA256')
            $pub = [System.Security.Cryptography.X509Certificates.ECDsaCertificateExtensions]::GetECDsaPublicKey($cert)
            Check ($pub.VerifyData($data, $sig, 'SHA256')) "$t's key matches its certificate"
        }
    }
    # The chain: intermediates in <Location>\CA, the root never added to Root by kvvm.
    $chain = New-Object System.Security.Cryptography.X509Certificates.X509Chain
    $chain.ChainPolicy.RevocationMode = 'NoCheck'
    [void] $chain.Build($cert)
    $elements = @($chain.ChainElements | ForEach-Object { $_.Certificate })
    for ($i = 1; $i -lt $elements.Count; $i++) {
        $c = $elements[$i]
        if ($c.Subject -eq $c.Issuer) {
            $inRoot = Test-Path "Cert:\$Location\Root\$($c.Thumbprint)"
            Write-Output "info  root $($c.Subject) is $(if ($inRoot) { '' } else { 'not ' })trusted in $Location\Root (kvvm never adds it)"
        } else {
            Check (Test-Path "Cert:\$Location\CA\$($c.Thumbprint)") "intermediate $($c.Subject) is in $Location\CA"
        }
    }
}
# The service's recovery actions: restart after 1 s, 30 s, then 300 s, the count reset after 600 s without a
# crash, and also after an exit with an error (platform/windows/service.rs, RECOVERY and RECOVERY_RESET).
if (Get-Service -Name $Service -ErrorAction SilentlyContinue) {
    $failure = (& sc.exe qfailure $Service) -join "`n"
    Check ($failure -match 'RESET_PERIOD \(in seconds\)\s*:\s*600') "service $Service resets its failure count after 600 s"
    $restarts = [regex]::Matches($failure, 'RESTART -- Delay = (\d+) milliseconds') | ForEach-Object { $_.Groups[1].Value }
    Check (($restarts -join ',') -eq '1000,30000,300000') "service $Service restarts after 1 s, 30 s, 300 s (found: $($restarts -join ', ') ms)"
    $flag = (& sc.exe qfailureflag $Service) -join "`n"
    Check ($flag -match 'FAILURE_ACTIONS_ON_NONCRASH_FAILURES\s*:\s*TRUE') "service $Service restarts after an exit with an error too"
} else {
    Write-Output "info  no service named $Service (the worker's service checks are skipped)"
}
if ($failed -gt 0) { Write-Output "$failed check(s) failed"; exit 1 }
Write-Output "all checks passed"
