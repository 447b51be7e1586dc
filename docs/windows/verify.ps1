<#
.SYNOPSIS
  Checks on a real Windows machine what kvvm's Windows tests cannot show under Wine: that each observed
  certificate is in its store with its private key, its intermediates in the location's CA store, and its root
  not added to Root; that a server-auth certificate's chain validates; which provider keeps its private key and
  whether it exports (`keyExportable`); who may use it (`accounts`); the replace notification IIS's automatic
  rebind follows (`-Renews`, linkOnRenewal); and the worker's service's recovery actions.

.DESCRIPTION
  Wine's crypt32 implements the import and the stores, and kvvm's tests check those under Wine. It does not keep
  one key container per PFX (every imported key lands in the same one), its LocalMachine key look-ups do not
  work, and it ignores key flags. This script checks those parts where they are real. Run it in an elevated
  PowerShell on the VM after kvvm has installed the certificates, with the thumbprints `kvvm status --json` (or
  the status file) reports.

  For a certificate whose settings list `accounts`, pass them as -Accounts (once per certificate, with its
  thumbprints): the private key's file (CNG: %ProgramData%\Microsoft\Crypto\Keys; CAPI:
  %ProgramData%\Microsoft\Crypto\RSA\MachineKeys; the user's profile for CurrentUser) must give SYSTEM and
  Administrators full control and each account read, and inherit nothing (platform/windows/key_acl.rs).

.EXAMPLE
  .\verify.ps1 -Location LocalMachine -Store MY -Thumbprint 3D41ED6F291657224B7D28860E96146D5A41A55C

.EXAMPLE
  .\verify.ps1 -Thumbprint 3D41ED6F291657224B7D28860E96146D5A41A55C -Accounts 'Network Service', 'IIS_IUSRS'

.EXAMPLE
  .\verify.ps1 -Thumbprint 8E1C0D1F5A0B7F2E3C4D5A6B7C8D9E0F1A2B3C4D -Renews 3D41ED6F291657224B7D28860E96146D5A41A55C
#>
param(
    [ValidateSet('LocalMachine', 'CurrentUser')]
    [string] $Location = 'LocalMachine',
    [string] $Store = 'MY',
    [Parameter(Mandatory = $true)]
    [string[]] $Thumbprint,
    # The certificate's `accounts`, as its settings list them: each must be able to read its private key.
    [string[]] $Accounts = @(),
    # The provider expected to keep each key: the Microsoft Software Key Storage Provider (CNG), unless the vault's
    # PFX named another for its key (e.g. 'Microsoft Enhanced RSA and AES Cryptographic Provider').
    [string] $KeyProvider = 'Microsoft Software Key Storage Provider',
    # The certificate's `keyExportable`: its key must then export encrypted only (a CNG key never in plaintext),
    # and otherwise not at all.
    [switch] $Exportable,
    # With one -Thumbprint: the version it replaced (linkOnRenewal), to check the replace notification IIS follows.
    [string] $Renews = '',
    # The worker's Windows service, whose recovery actions Wine's service manager cannot report.
    [string] $Service = 'kvvm'
)

$failed = 0
function Check([bool] $ok, [string] $what) {
    if ($ok) { Write-Output "ok    $what" } else { Write-Output "FAIL  $what"; $script:failed++ }
}

# An account's SID as kvvm resolves it: the service accounts by their well-known SIDs (their names are localized),
# a SID as it is, any other name through Windows (NTAccount.Translate, as LookupAccountName); $null if unknown.
function AccountSid([string] $Account) {
    $name = ($Account.Trim() -replace '^NT AUTHORITY\\', '').ToLowerInvariant()
    if ($name -in 'network service', 'networkservice') { return 'S-1-5-20' }
    if ($name -in 'local service', 'localservice') { return 'S-1-5-19' }
    if ($name -in 'system', 'local system', 'localsystem') { return 'S-1-5-18' }
    try {
        if ($name -match '^s-1-') { return (New-Object System.Security.Principal.SecurityIdentifier($Account.Trim())).Value }
        return (New-Object System.Security.Principal.NTAccount($Account.Trim())).Translate(
            [System.Security.Principal.SecurityIdentifier]).Value
    } catch { return $null }
}

# The file that holds a private key: CNG keys by their unique name, CAPI keys by their unique container name.
function KeyFile($Key) {
    $base = if ($Location -eq 'LocalMachine') { $env:ProgramData } else { $env:APPDATA }
    if ($Key -is [System.Security.Cryptography.RSACng] -or $Key -is [System.Security.Cryptography.ECDsaCng]) {
        return Join-Path "$base\Microsoft\Crypto\Keys" $Key.Key.UniqueName
    }
    if ($Key -is [System.Security.Cryptography.ICspAsymmetricAlgorithm]) {
        $folder = if ($Location -eq 'LocalMachine') { 'MachineKeys' } else {
            [System.Security.Principal.WindowsIdentity]::GetCurrent().User.Value
        }
        return Join-Path "$base\Microsoft\Crypto\RSA\$folder" $Key.CspKeyContainerInfo.UniqueKeyContainerName
    }
    return $null
}

# The rights an ACL allows a SID, as one mask (generic rights as Windows may keep them unmapped).
function AllowedMask($Rules, [string] $Sid) {
    $mask = 0
    foreach ($r in $Rules) {
        if ($r.AccessControlType -eq 'Allow' -and $r.IdentityReference.Value -eq $Sid) { $mask = $mask -bor [int] $r.FileSystemRights }
    }
    return $mask
}
$genericAll = 0x10000000
$genericRead = [int]::MinValue  # 0x80000000
function IsFull([int] $Mask) { (($Mask -band 0x1F01FF) -eq 0x1F01FF) -or (($Mask -band $genericAll) -ne 0) }
function IsRead([int] $Mask) { (($Mask -band 0x1) -ne 0) -or (($Mask -band ($genericRead -bor $genericAll)) -ne 0) }

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
    # Who keeps the key (cert_store.rs, PKCS12_PREFER_CNG_KSP), as the certificate's key-provider property says
    # (certutil prints it; .NET may open a CryptoAPI key through CNG and so name the wrong provider), and whether
    # it exports (keyExportable): a CNG key's export policy is AllowExport alone when exportable (never
    # AllowPlaintextExport), None otherwise; a CryptoAPI key is exportable or not.
    if ($null -ne $key) {
        $scope = if ($Location -eq 'CurrentUser') { @('-user') } else { @() }
        $dump = & certutil.exe @scope -store $Store $t 2>$null
        $line = $dump | Where-Object { $_ -match '^\s*Provider = (.+)$' } | Select-Object -First 1
        $provider = if ($line -match '^\s*Provider = (.+)$') { $Matches[1].Trim() } else { $null }
        Check ($provider -eq $KeyProvider) "$t's key is kept by $KeyProvider (found: $provider)"
        $capi = $null
        try { $capi = $cert.PrivateKey.CspKeyContainerInfo } catch { $capi = $null }
        if ($null -ne $capi) {
            Check ($capi.Exportable -eq [bool]$Exportable) "$t's CryptoAPI key is exportable: $([bool]$Exportable) (found: $($capi.Exportable))"
        } elseif ($key -is [System.Security.Cryptography.RSACng] -or $key -is [System.Security.Cryptography.ECDsaCng]) {
            $policy = "$($key.Key.ExportPolicy)"
            $expected = if ($Exportable) { 'AllowExport' } else { 'None' }
            Check ($policy -eq $expected) "$t's CNG key's export policy is $expected (found: $policy)"
        } else {
            Write-Output "info  $t's key is a $($key.GetType().FullName): its export policy is not checked"
        }
    }
    # Who may use the key (`accounts`): SYSTEM and Administrators full control, each account read, nothing
    # inherited (kvvm sets a protected DACL, key_acl.rs).
    if ($Accounts.Count -gt 0 -and $null -ne $key) {
        $file = KeyFile $key
        Check ($null -ne $file -and (Test-Path -LiteralPath $file)) "$t's private key file is $file"
        if ($null -ne $file -and (Test-Path -LiteralPath $file)) {
            $acl = Get-Acl -LiteralPath $file
            Write-Output "info  $t's private key ACL: $($acl.GetSecurityDescriptorSddlForm('Access'))"
            $rules = $acl.GetAccessRules($true, $true, [System.Security.Principal.SecurityIdentifier])
            Check $acl.AreAccessRulesProtected "$t's private key ACL inherits nothing"
            Check (IsFull (AllowedMask $rules 'S-1-5-18')) "SYSTEM has full control of $t's private key"
            Check (IsFull (AllowedMask $rules 'S-1-5-32-544')) "Administrators have full control of $t's private key"
            $expected = @('S-1-5-18', 'S-1-5-32-544')
            foreach ($a in $Accounts) {
                $sid = AccountSid $a
                Check ($null -ne $sid) "account $a is known to Windows"
                if ($null -eq $sid) { continue }
                $expected += $sid
                Check (IsRead (AllowedMask $rules $sid)) "$a ($sid) can read $t's private key"
            }
            foreach ($r in $rules) {
                if ($r.IdentityReference.Value -notin $expected) {
                    Write-Output "info  $t's private key also allows $($r.IdentityReference.Value): $($r.AccessControlType) $($r.FileSystemRights)"
                }
            }
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
    # A certificate for TLS server authentication went in only because its chain validated for that usage
    # (platform/windows/chain.rs): build it again with the server-auth policy; only an untrusted root or a
    # revocation that could not be checked may be left (kvvm never adds a root, and does not check revocation).
    $serverAuth = '1.3.6.1.5.5.7.3.1'
    $eku = $cert.Extensions | Where-Object { $_.Oid.Value -eq '2.5.29.37' }
    if ($null -ne $eku -and @($eku.EnhancedKeyUsages | ForEach-Object { $_.Value }) -contains $serverAuth) {
        $policy = New-Object System.Security.Cryptography.X509Certificates.X509Chain
        $policy.ChainPolicy.RevocationMode = 'NoCheck'
        [void] $policy.ChainPolicy.ApplicationPolicy.Add((New-Object System.Security.Cryptography.Oid $serverAuth))
        [void] $policy.Build($cert)
        $left = @($policy.ChainStatus | Where-Object { $_.Status -notin 'UntrustedRoot', 'PartialChain', 'RevocationStatusUnknown', 'OfflineRevocation' })
        Check ($left.Count -eq 0) "$t's chain validates for TLS server authentication (found: $(($left | ForEach-Object { $_.Status }) -join ', '))"
    }
    # The certificate replace notification (linkOnRenewal; platform/windows/lifecycle.rs): with -Renews, the
    # version this one replaced, event 1001 of the lifecycle channel names both, which is what IIS's automatic
    # rebind task (IIS-AutoCertRebind) runs `appcmd renew binding` on.
    if ($Renews) {
        $old = $Renews.ToUpperInvariant()
        Check (Test-Path "Cert:\$Location\$Store\$old") "$old (the version $t replaced) is in $Location\$Store"
        $log = 'Microsoft-Windows-CertificateServicesClient-Lifecycle-System/Operational'
        $events = @(Get-WinEvent -LogName $log -FilterXPath '*[System[EventID=1001]]' -ErrorAction SilentlyContinue |
            Where-Object { $x = $_.ToXml(); $x -match $old -and $x -match $t })
        Check ($events.Count -gt 0) "event 1001 (certificate replaced) names $old and $t in $log (enable the log with: wevtutil sl $log /e:true)"
        $task = Get-ScheduledTask -TaskPath '\Microsoft\Windows\CertificateServicesClient\' -TaskName 'IIS-AutoCertRebind' -ErrorAction SilentlyContinue
        Write-Output "info  IIS automatic rebind task: $(if ($task) { 'registered' } else { 'not registered (enable it in IIS Manager: Server Certificates > Enable Automatic Rebind of Renewed Certificate)' })"
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
