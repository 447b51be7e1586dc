<#
.SYNOPSIS
  Checks on a real Windows machine what kvvm's Windows tests cannot show under Wine: that each observed
  certificate is in its store with its private key, its intermediates in the location's CA store, and its root
  not added to Root.

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
    [string[]] $Thumbprint
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
if ($failed -gt 0) { Write-Output "$failed check(s) failed"; exit 1 }
Write-Output "all checks passed"
