//! A simulated Windows VM for the Windows package's end-to-end test: a Wine prefix of its own (Wine's registry
//! holds its certificate stores and its service control manager's services) and a Windows guest agent that
//! does what the real one does with an extension package (REFERENCE.md §8):
//!
//! * unpacks the zip into `C:\Packages\Plugins\<Publisher>.<Type>\<version>\`;
//! * writes `HandlerEnvironment.json` (an array of one `handlerEnvironment` with `logFolder`
//!   `C:\WindowsAzure\Logs\Plugins\<Publisher>.<Type>\<version>`, `configFolder` `RuntimeSettings`,
//!   `statusFolder` `Status`, `heartbeatFile` `Status\HeartBeat.Json`) and `RuntimeSettings\<n>.settings`;
//! * runs the command `HandlerManifest.json` names for each verb from the extension folder, with
//!   `ConfigSequenceNumber` and the `AZURE_GUEST_AGENT_EXTENSION_*` variables set, and kills one that overruns.
//!
//! Only inside [`crate::netns::run_isolated`], where the fake IMDS and Key Vault are at a VM's addresses and
//! the test CA is in the system bundle (which Wine's crypt32 imports into its `Root` store).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Wine's loader (Debian's `wine` package; not on PATH).
pub const WINE: &str = "/usr/lib/wine/wine64";
/// Wine's server: one per prefix, it owns the prefix's registry.
pub const WINESERVER: &str = "/usr/lib/wine/wineserver";
/// The Windows package's extension name.
pub const HANDLER_NAME: &str = "Microsoft.Azure.KeyVault.KeyVaultForWindows";
/// How long the agent lets one command run before it kills it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A Wine prefix of this test's own, copied from the one `scripts/windows.sh prefix` boots (created first if
/// missing), and the tools the test reads it with.
pub struct WineMachine {
    dir: tempfile::TempDir,
    prefix: PathBuf,
    cert_list: PathBuf,
    /// A program that waits for the machine's life (`cmd /c pause`, its stdin held open): Wine ends its system
    /// processes, services included, when the last other program exits, where Windows keeps them running.
    session: std::cell::RefCell<Option<std::process::Child>>,
}

/// What a program run under Wine did.
#[derive(Debug)]
pub struct Ran {
    /// Its exit code (`None`: killed after the timeout).
    pub code: Option<i32>,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

impl Ran {
    /// Panics with what it printed unless it exited with 0.
    pub fn assert_success(&self, what: &str) -> &Ran {
        assert_eq!(self.code, Some(0), "{what} failed: {self:#?}");
        self
    }
}

impl Default for WineMachine {
    fn default() -> WineMachine {
        WineMachine::new()
    }
}

impl WineMachine {
    /// A fresh machine. Panics with the fix when Wine or mingw is missing (`make deps` installs both).
    pub fn new() -> WineMachine {
        for tool in [WINE, WINESERVER, "/usr/bin/x86_64-w64-mingw32-gcc"] {
            assert!(Path::new(tool).exists(), "{tool} is missing: run make deps");
        }
        let booted = workspace().join("target/windows/wine");
        // Tests start at once: one of them makes the prefix (a fresh clone has none), the others wait for it.
        fs::create_dir_all(workspace().join("target/windows")).unwrap();
        let lock = File::create(workspace().join("target/windows/wine.lock")).unwrap();
        lock.lock().expect("lock target/windows/wine.lock");
        if !booted
            .join("drive_c/windows/system32/bcryptprimitives.dll")
            .exists()
        {
            let status = Command::new("bash")
                .arg(workspace().join("scripts/windows.sh"))
                .arg("prefix")
                .status()
                .expect("run scripts/windows.sh prefix");
            assert!(status.success(), "scripts/windows.sh prefix failed");
        }
        let dir = tempfile::Builder::new()
            .prefix("kvvm-wine-")
            .tempdir()
            .unwrap();
        let prefix = dir.path().join("prefix");
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&booted)
            .arg(&prefix)
            .status()
            .unwrap();
        assert!(copied.success(), "copy the Wine prefix");
        let cert_list = dir.path().join("cert-list.exe");
        let built = Command::new("x86_64-w64-mingw32-gcc")
            .args(["-municode", "-O2", "-Wall", "-o"])
            .arg(&cert_list)
            .arg(workspace().join("scripts/windows/cert-list.c"))
            .arg("-lcrypt32")
            .status()
            .unwrap();
        assert!(built.success(), "build scripts/windows/cert-list.c");
        let machine = WineMachine {
            dir,
            prefix,
            cert_list,
            session: Default::default(),
        };
        let session = machine
            .wine("cmd.exe")
            .args(["/c", "pause"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the machine's session");
        machine.session.replace(Some(session));
        machine
    }

    /// Where the machine's `path` (`C:\…`) is on this host.
    pub fn host_path(&self, path: &str) -> PathBuf {
        let rest = path
            .strip_prefix("C:\\")
            .unwrap_or_else(|| panic!("{path} is not on C:"));
        rest.split('\\')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.join("drive_c"), |p, part| p.join(part))
    }

    fn wine(&self, program: &str) -> Command {
        let mut command = Command::new(WINE);
        command
            .arg(program)
            .env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all")
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .env("WINEARCH", "win64")
            .env_remove("DISPLAY");
        command
    }

    /// Runs `program` (a Windows path, or a program on Wine's PATH) with `args` from the host folder `cwd`, and
    /// `env`, killing it after [`COMMAND_TIMEOUT`]. Its output goes through files, not pipes: a service it starts
    /// (and Wine's own processes) may inherit its handles and outlive it.
    pub fn run(&self, program: &str, args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Ran {
        let out = self.dir.path().join("out");
        let err = self.dir.path().join("err");
        let mut child = self
            .wine(program)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .expect("start wine");
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ran {
            code,
            stdout: fs::read_to_string(&out).unwrap_or_default(),
            stderr: fs::read_to_string(&err).unwrap_or_default(),
        }
    }

    /// The certificates of `location` (`LocalMachine`, `CurrentUser`) `\` `store` as crypt32 lists them: each
    /// one's SHA-1 thumbprint and whether a private key is associated with it.
    pub fn certificates(&self, location: &str, store: &str) -> Vec<(String, bool)> {
        let lister = format!("Z:{}", self.cert_list.display()).replace('/', "\\");
        let ran = self.run(&lister, &[location, store], self.dir.path(), &[]);
        ran.assert_success("cert-list");
        ran.stdout
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                Some((words.next()?.to_string(), words.next()? == "key"))
            })
            .collect()
    }

    /// Whether the service control manager knows the service `name` (its key in the registry).
    pub fn service_exists(&self, name: &str) -> bool {
        let key = format!(r"HKLM\System\CurrentControlSet\Services\{name}");
        self.run("reg.exe", &["query", &key], self.dir.path(), &[])
            .code
            == Some(0)
    }

    /// Waits for the machine's programs to end (Wine then ends its own: services, devices) and returns the
    /// machine registry (`system.reg`) as Wine's server writes it when it exits (a killed server writes
    /// nothing). Panics if something still runs after a minute.
    pub fn shut_down(&self) -> String {
        if let Some(mut session) = self.session.take() {
            drop(session.stdin.take());
            let _ = session.kill();
            let _ = session.wait();
        }
        let mut wait = Command::new(WINESERVER)
            .arg("-w")
            .env("WINEPREFIX", &self.prefix)
            .spawn()
            .expect("run wineserver -w");
        let deadline = Instant::now() + Duration::from_secs(60);
        while wait.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = wait.kill();
                self.stop_wineserver();
                panic!("the Wine machine still runs programs after a minute");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        fs::read_to_string(self.prefix.join("system.reg")).expect("read system.reg")
    }

    fn stop_wineserver(&self) {
        let _ = Command::new(WINESERVER)
            .arg("-k")
            .env("WINEPREFIX", &self.prefix)
            .status();
        let _ = Command::new(WINESERVER)
            .arg("-w")
            .env("WINEPREFIX", &self.prefix)
            .status();
    }
}

impl Drop for WineMachine {
    fn drop(&mut self) {
        if let Some(mut session) = self.session.take() {
            let _ = session.kill();
            let _ = session.wait();
        }
        self.stop_wineserver();
    }
}

/// The thumbprints `system.reg` holds in the machine's certificate store `store`
/// (`Software\Microsoft\SystemCertificates\<store>\Certificates\<SHA-1>`; registry keys are named without
/// regard to case, and Wine keeps the case the key was first created with, e.g. `My`).
pub fn registry_certificates(system_reg: &str, store: &str) -> Vec<String> {
    let key =
        format!("[Software\\\\Microsoft\\\\SystemCertificates\\\\{store}\\\\Certificates\\\\")
            .to_lowercase();
    system_reg
        .lines()
        .filter(|line| {
            line.is_char_boundary(key.len()) && line[..key.len()].eq_ignore_ascii_case(&key)
        })
        .map(|line| &line[key.len()..])
        .filter_map(|rest| rest.split(']').next())
        .map(str::to_uppercase)
        .collect()
}

/// One extension as the Windows guest agent has unpacked it.
pub struct WindowsExtension<'m> {
    machine: &'m WineMachine,
    version: String,
    /// The extension folder, `C:\Packages\Plugins\<name>\<version>`.
    pub dir: String,
    /// Its log folder, `C:\WindowsAzure\Logs\Plugins\<name>\<version>`.
    pub log_folder: String,
}

impl<'m> WindowsExtension<'m> {
    /// Unpacks `zip` as version `version` of [`HANDLER_NAME`] and writes its `HandlerEnvironment.json`.
    pub fn unpack(machine: &'m WineMachine, zip: &Path, version: &str) -> WindowsExtension<'m> {
        let dir = format!(r"C:\Packages\Plugins\{HANDLER_NAME}\{version}");
        let log_folder = format!(r"C:\WindowsAzure\Logs\Plugins\{HANDLER_NAME}\{version}");
        let host = machine.host_path(&dir);
        fs::create_dir_all(&host).unwrap();
        let mut archive = zip::ZipArchive::new(File::open(zip).expect("open the package")).unwrap();
        archive.extract(&host).expect("unpack the package");
        for folder in ["RuntimeSettings", "Status"] {
            fs::create_dir_all(host.join(folder)).unwrap();
        }
        fs::create_dir_all(machine.host_path(&log_folder)).unwrap();
        let environment = json!([{
            "version": 1.0,
            "handlerEnvironment": {
                "logFolder": log_folder,
                "configFolder": format!(r"{dir}\RuntimeSettings"),
                "statusFolder": format!(r"{dir}\Status"),
                "heartbeatFile": format!(r"{dir}\Status\HeartBeat.Json"),
                "deploymentid": "",
                "rolename": "",
                "instance": "",
                "hostResolverAddress": "",
                "eventsFolder": "",
            }
        }]);
        fs::write(
            host.join("HandlerEnvironment.json"),
            serde_json::to_vec_pretty(&environment).unwrap(),
        )
        .unwrap();
        WindowsExtension {
            machine,
            version: version.to_string(),
            dir,
            log_folder,
        }
    }

    fn host_dir(&self) -> PathBuf {
        self.machine.host_path(&self.dir)
    }

    /// Writes `RuntimeSettings\<seq>.settings` with `public` as the public settings.
    pub fn write_settings(&self, seq: u64, public: Value) {
        let settings = json!({"runtimeSettings": [{"handlerSettings": {
            "protectedSettingsCertThumbprint": null,
            "protectedSettings": null,
            "publicSettings": public,
        }}]});
        fs::write(
            self.host_dir()
                .join("RuntimeSettings")
                .join(format!("{seq}.settings")),
            serde_json::to_vec(&settings).unwrap(),
        )
        .unwrap();
    }

    /// Runs the command `HandlerManifest.json` names for `verb` (`install`, `enable`, …) with settings `seq`,
    /// from the extension folder, as the agent does.
    pub fn run(&self, verb: &str, seq: u64) -> Ran {
        let manifest: Value = serde_json::from_slice(
            &fs::read(self.host_dir().join("HandlerManifest.json")).expect("HandlerManifest.json"),
        )
        .expect("HandlerManifest.json is JSON");
        let command = manifest[0]["handlerManifest"][format!("{verb}Command")]
            .as_str()
            .unwrap_or_else(|| panic!("HandlerManifest.json has no {verb}Command"));
        let mut words = command.split_whitespace();
        let program = format!(r"{}\{}", self.dir, words.next().unwrap());
        let args: Vec<&str> = words.collect();
        let seq = seq.to_string();
        self.machine.run(
            &program,
            &args,
            &self.host_dir(),
            &[
                ("ConfigSequenceNumber", &seq),
                ("AZURE_GUEST_AGENT_EXTENSION_PATH", &self.dir),
                ("AZURE_GUEST_AGENT_EXTENSION_VERSION", &self.version),
            ],
        )
    }

    /// Runs the package's `kvvm.exe` with `args` (e.g. `status --json`), as an administrator would.
    pub fn kvvm(&self, args: &[&str]) -> Ran {
        self.machine.run(
            &format!(r"{}\kvvm.exe", self.dir),
            args,
            &self.host_dir(),
            &[],
        )
    }

    /// `Status\<seq>.status` as the agent reads it (`None` while missing or half-written).
    pub fn status(&self, seq: u64) -> Option<Value> {
        let text = fs::read(self.host_dir().join("Status").join(format!("{seq}.status"))).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// A log file of the extension's log folder (empty when missing).
    pub fn log(&self, file: &str) -> String {
        fs::read_to_string(self.machine.host_path(&self.log_folder).join(file)).unwrap_or_default()
    }
}

/// The Windows VM Application manager's side of one application version (REFERENCE.md §7): its download folder
/// `C:\Packages\Plugins\Microsoft.CPlat.Core.VMApplicationManagerWindows\<v>\Downloads\<app>\<version>\`, the
/// package saved as the version's `packageFileName` (`kvvm.exe`) and the configuration as its `configFileName`
/// (`kvvm-settings.json`), and each manage action of `docs/deploy/vmapp-windows/manage-actions.json` run as the
/// manager runs it: `cmd.exe /c <action>` in that folder, as a child of an extension (so with the manager's own
/// `AZURE_GUEST_AGENT_EXTENSION_PATH`).
pub struct VmApplication<'m> {
    machine: &'m WineMachine,
    /// The download folder, as the machine names it.
    pub dir: String,
}

/// The VM Application manager for Windows: an extension of its own.
const VMAPP_MANAGER: &str =
    r"C:\Packages\Plugins\Microsoft.CPlat.Core.VMApplicationManagerWindows\1.0.16";

impl<'m> VmApplication<'m> {
    /// Downloads version `version` of the application `app`: `package` as `kvvm.exe`, `config` as
    /// `kvvm-settings.json`.
    pub fn download(
        machine: &'m WineMachine,
        app: &str,
        version: &str,
        package: &Path,
        config: &Value,
    ) -> VmApplication<'m> {
        let dir = format!(r"{VMAPP_MANAGER}\Downloads\{app}\{version}");
        let host = machine.host_path(&dir);
        fs::create_dir_all(&host).unwrap();
        fs::copy(package, host.join("kvvm.exe")).expect("download the package");
        let app = VmApplication { machine, dir };
        app.write_config(config);
        app
    }

    /// Replaces the downloaded configuration (a new `configurationReference`).
    pub fn write_config(&self, config: &Value) {
        fs::write(
            self.machine.host_path(&self.dir).join("kvvm-settings.json"),
            serde_json::to_vec_pretty(config).unwrap(),
        )
        .unwrap();
    }

    /// Runs the manage action `action` (`install`, `update`, `remove`) as the manager does.
    pub fn run(&self, action: &str) -> Ran {
        let actions: Value = serde_json::from_slice(
            &fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../docs/deploy/vmapp-windows/manage-actions.json"),
            )
            .expect("docs/deploy/vmapp-windows/manage-actions.json"),
        )
        .expect("manage-actions.json is JSON");
        let command = actions[action]
            .as_str()
            .unwrap_or_else(|| panic!("manage-actions.json has no {action}"));
        self.machine.run(
            "cmd.exe",
            &["/c", command],
            &self.machine.host_path(&self.dir),
            &[("AZURE_GUEST_AGENT_EXTENSION_PATH", VMAPP_MANAGER)],
        )
    }
}

/// The SHA-1 thumbprint Windows names the certificate in `pem` by.
pub fn thumbprint(pem: &Path) -> String {
    let out = crate::pki::openssl(
        pem.parent().unwrap(),
        &[
            "x509",
            "-in",
            pem.to_str().unwrap(),
            "-noout",
            "-fingerprint",
            "-sha1",
        ],
    )
    .unwrap();
    String::from_utf8(out)
        .unwrap()
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
}

/// How a certificate's secret is stored in the vault.
#[derive(Debug, Clone, Copy)]
pub enum Format {
    /// PEM text (`application/x-pem-file`).
    Pem,
    /// PKCS#12 as Key Vault makes it (`application/x-pkcs12`).
    Pfx,
}

/// A fresh three-certificate chain for `cn` in `dir`/`name`, valid 90 days, with an RSA key (Wine's PFX import
/// refuses EC keys, which Windows imports: docs/windows/verify.ps1), put into the fake vault as secret `name`.
pub fn rsa_secret(
    fakes: &crate::vm::Fakes,
    dir: &Path,
    name: &str,
    cn: &str,
    format: Format,
) -> crate::pki::Chain {
    use crate::pki::{Chain, KeyType, PemLayout, PfxVariant};
    use crate::vault::SecretValue;
    let chain = Chain::generate(&dir.join(name), cn, KeyType::Rsa(2048), 90).unwrap();
    let value = match format {
        Format::Pem => SecretValue::pem(chain.pem(PemLayout::default()).unwrap()),
        Format::Pfx => SecretValue::pkcs12(&chain.pfx(PfxVariant::KeyVault).unwrap()),
    };
    fakes.vault.put_secret(crate::vm::VAULT_HOST, name, value);
    chain
}

/// Waits up to `patience` for `check` to return something; panics with `what` and `context()` otherwise.
pub fn wait_for<T>(
    what: &str,
    patience: Duration,
    mut check: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
