//! The command to run after a new certificate version is installed (e.g. `systemctl reload nginx`), so the
//! application loads it: Linux has no equivalent of the Windows extension's IIS rebinding. The command runs
//! without a shell unless asked, in its own process group with a timeout (the whole group is killed when it
//! expires), with the certificate's paths and version in its environment, and at most once per poll cycle per
//! distinct command even when several certificates changed. Its exit code and the tail of its output are kept
//! for the status file.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How much of the command's output is kept (its last bytes).
pub(crate) const OUTPUT_TAIL: usize = 1024;

/// A configured command.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hook {
    /// Program and arguments; with `shell`, a single shell command line.
    pub argv: Vec<String>,
    /// Run `argv[0]` through the shell: `/bin/sh -c` (Windows: `cmd.exe /C`).
    pub shell: bool,
    /// How long the command may run before it is killed (`postInstallCommand.timeoutInS`).
    pub timeout: Duration,
}

/// One installed certificate, as the command sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Installed {
    pub url: String,
    pub link: PathBuf,
    pub file: PathBuf,
    pub version: String,
    /// The version folder's link (`<link>.d`), when `additionalFormats` writes one.
    pub dir: Option<PathBuf>,
    /// The version this one replaced (its file; Windows: `Cert:\<Location>\<Store>\<thumbprint>`), if any.
    pub previous: Option<PathBuf>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HookRun {
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub duration: Duration,
    /// The last `OUTPUT_TAIL` bytes of stdout and stderr together (lossy UTF-8).
    pub output_tail: String,
}

impl HookRun {
    pub(crate) fn success(&self) -> bool {
        !self.timed_out && self.exit_code == Some(0)
    }

    /// One line for the substatus and the log.
    pub(crate) fn summary(&self, hook: &Hook) -> String {
        let outcome = match (self.timed_out, self.exit_code) {
            (true, _) => format!(
                "timed out after {} s and was killed",
                hook.timeout.as_secs()
            ),
            (false, Some(code)) => format!("exited with {code}"),
            (false, None) => "was killed by a signal".to_string(),
        };
        let tail = self.output_tail.trim();
        let tail = if tail.is_empty() {
            String::new()
        } else {
            format!("; output: {tail}")
        };
        format!(
            "post-install command {:?} {outcome}{tail}",
            hook.argv.join(" ")
        )
    }
}

/// Why a command could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HookError {
    /// The command has no program: an empty list, or an empty shell line.
    #[error("post-install command {argv:?} is empty: give a program and its arguments")]
    Empty {
        /// The command as configured.
        argv: Vec<String>,
    },
    /// The program could not be started (not found, not executable).
    #[error(
        "post-install command {program:?} could not be started: {source}; check the path and that it is executable"
    )]
    Spawn {
        /// The program (with `shell`, `/bin/sh`).
        program: String,
        /// Why `spawn` failed.
        source: std::io::Error,
    },
}

/// Runs `hook` for the certificates that changed (the first one's paths in `KVVM_CERTIFICATE_*`, all of them in
/// `KVVM_CHANGED_LINKS`, newline-separated).
pub(crate) fn run(hook: &Hook, changed: &[Installed]) -> Result<HookRun, HookError> {
    let (program, args): (&str, Vec<&str>) = if hook.shell {
        let line = hook.argv.first().ok_or(HookError::Empty {
            argv: hook.argv.clone(),
        })?;
        (SHELL, vec![SHELL_FLAG, line])
    } else {
        let (first, rest) = hook.argv.split_first().ok_or(HookError::Empty {
            argv: hook.argv.clone(),
        })?;
        (first, rest.iter().map(String::as_str).collect())
    };
    let mut command = Command::new(program);
    shell_args(&mut command, hook.shell, &args);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir(ROOT_DIR);
    #[cfg(unix)]
    {
        // The service's systemd notification socket is kvvm's, not the command's.
        command.env_remove(crate::notify::SOCKET_VAR);
        match crate::residency::tunables_for_commands() {
            Some(theirs) => command.env(crate::residency::TUNABLES_VAR, theirs),
            None => command.env_remove(crate::residency::TUNABLES_VAR),
        };
    }
    if let Some(first) = changed.first() {
        command
            .env("KVVM_CERTIFICATE_URL", &first.url)
            .env("KVVM_CERTIFICATE_PATH", &first.link)
            .env("KVVM_CERTIFICATE_FILE", &first.file)
            .env("KVVM_CERTIFICATE_VERSION", &first.version);
        if let Some(dir) = &first.dir {
            command.env("KVVM_CERTIFICATE_DIR", dir);
        }
        if let Some(previous) = &first.previous {
            command.env("KVVM_PREVIOUS_FILE", previous);
        }
        // Windows: the version is `Cert:\<Location>\<Store>\<thumbprint>`; scripts (`netsh http update sslcert`,
        // `Get-Item Cert:\…`) want the thumbprints themselves, the new and the one it replaced.
        #[cfg(windows)]
        for (var, file) in [
            ("KVVM_CERTIFICATE_THUMBPRINT", Some(&first.file)),
            ("KVVM_PREVIOUS_THUMBPRINT", first.previous.as_ref()),
        ] {
            if let Some(thumbprint) = file.and_then(|f| f.file_name()) {
                command.env(var, thumbprint);
            }
        }
    }
    let links: Vec<String> = changed
        .iter()
        .map(|c| c.link.display().to_string())
        .collect();
    command.env("KVVM_CHANGED_LINKS", links.join("\n"));

    let started = Instant::now();
    let (mut child, tree) = Tree::spawn(&mut command).map_err(|source| HookError::Spawn {
        program: program.to_string(),
        source,
    })?;
    let tail = Arc::new(Mutex::new(Vec::<u8>::new()));
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut stream| {
        let tail = Arc::clone(&tail);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                t.extend_from_slice(&buf[..n]);
                if t.len() > OUTPUT_TAIL {
                    let cut = t.len() - OUTPUT_TAIL;
                    t.drain(..cut);
                }
            }
        })
    })
    .collect();

    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= hook.timeout => {
                timed_out = true;
                tree.kill();
                break child.wait().ok();
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    // Grandchildren that outlive the command keep the pipes open: don't wait for them forever.
    tree.kill();
    for reader in readers {
        let _ = reader.join();
    }
    let output = tail.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(HookRun {
        exit_code: status.and_then(|s| s.code()),
        timed_out,
        duration: started.elapsed(),
        output_tail: String::from_utf8_lossy(&output).into_owned(),
    })
}

/// The arguments: as they are, except a shell line on Windows, which goes to cmd.exe as written (cmd.exe parses
/// its command line itself, so quoting it as one argument would change it).
#[cfg(windows)]
fn shell_args(command: &mut Command, shell: bool, args: &[&str]) {
    use std::os::windows::process::CommandExt;
    match (shell, args) {
        (true, [flag, line]) => {
            command.arg(flag).raw_arg(line);
        }
        _ => {
            command.args(args);
        }
    }
}

/// The arguments, as they are (`/bin/sh -c` takes the line as one argument).
#[cfg(unix)]
fn shell_args(command: &mut Command, _shell: bool, args: &[&str]) {
    command.args(args);
}

/// The shell a `shell: true` command runs in, and how it is given the line.
#[cfg(unix)]
const SHELL: &str = "/bin/sh";
#[cfg(unix)]
const SHELL_FLAG: &str = "-c";
#[cfg(windows)]
const SHELL: &str = "cmd.exe";
#[cfg(windows)]
const SHELL_FLAG: &str = "/C";
/// Where commands start: the root of the filesystem (Windows: of the system drive).
#[cfg(unix)]
const ROOT_DIR: &str = "/";
#[cfg(windows)]
const ROOT_DIR: &str = "\\";

/// A command's process and everything it starts, killed together: on Linux its own process group, on
/// Windows a job object that kills what is left in it when closed.
#[cfg(unix)]
struct Tree(nix::unistd::Pid);

#[cfg(unix)]
impl Tree {
    fn spawn(command: &mut Command) -> std::io::Result<(Child, Tree)> {
        use std::os::unix::process::CommandExt;
        let child = command.process_group(0).spawn()?;
        // The child leads its own process group, so its pid names the group.
        let group = nix::unistd::Pid::from_raw(child.id() as i32);
        Ok((child, Tree(group)))
    }

    fn kill(&self) {
        let _ = nix::sys::signal::killpg(self.0, nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(windows)]
struct Tree(windows_sys::Win32::Foundation::HANDLE);

#[cfg(windows)]
impl Tree {
    fn spawn(command: &mut Command) -> std::io::Result<(Child, Tree)> {
        use std::os::windows::io::AsRawHandle;
        use windows_sys::Win32::System::JobObjects::{
            AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
            JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation,
            SetInformationJobObject,
        };
        // SAFETY: an anonymous job with default security; the handle is closed by Tree's Drop.
        let job = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if job.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        let tree = Tree(job);
        // SAFETY: a zeroed limit structure is valid; only the kill-on-close flag is set.
        let mut limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        // SAFETY: the structure and its size match the information class.
        let set = unsafe {
            SetInformationJobObject(
                job,
                JobObjectExtendedLimitInformation,
                (&limits as *const JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
                std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            )
        };
        if set == 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut child = command.spawn()?;
        // SAFETY: the child's process handle is live while `child` is. What the command starts from here on is
        // in the job too (a process it started in the instant before this call is not).
        if unsafe { AssignProcessToJobObject(job, child.as_raw_handle()) } == 0 {
            let e = std::io::Error::last_os_error();
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok((child, tree))
    }

    fn kill(&self) {
        // SAFETY: a live job handle.
        unsafe { windows_sys::Win32::System::JobObjects::TerminateJobObject(self.0, 1) };
    }
}

#[cfg(windows)]
impl Drop for Tree {
    fn drop(&mut self) {
        // SAFETY: the job handle is closed once; KILL_ON_JOB_CLOSE ends what is left in it.
        unsafe { windows_sys::Win32::Foundation::CloseHandle(self.0) };
    }
}

/// Groups the certificates that changed in a cycle by their command, so each distinct command runs once.
pub(crate) fn plan<'a>(
    changes: impl IntoIterator<Item = (&'a Hook, Installed)>,
) -> Vec<(Hook, Vec<Installed>)> {
    let mut plan: Vec<(Hook, Vec<Installed>)> = Vec::new();
    for (hook, installed) in changes {
        match plan.iter_mut().find(|(h, _)| h == hook) {
            Some((_, list)) => list.push(installed),
            None => plan.push((hook.clone(), vec![installed])),
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installed(name: &str) -> Installed {
        Installed {
            url: format!("https://v.vault.azure.net/secrets/{name}"),
            link: PathBuf::from(format!("/store/v.{name}")),
            file: PathBuf::from(format!("/store/v.{name}.0123")),
            version: "0123".into(),
            dir: None,
            previous: None,
        }
    }

    /// Long enough for any of these commands.
    const TIMEOUT: Duration = Duration::from_secs(60);

    fn hook(argv: &[&str], shell: bool, timeout: Duration) -> Hook {
        Hook {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            shell,
            timeout,
        }
    }

    #[test]
    #[cfg(unix)]
    fn runs_without_a_shell_with_the_certificate_in_its_environment() {
        let vars = [
            "KVVM_CERTIFICATE_PATH",
            "KVVM_CERTIFICATE_FILE",
            "KVVM_CERTIFICATE_VERSION",
            "KVVM_CERTIFICATE_URL",
            "KVVM_PREVIOUS_FILE",
            "KVVM_CHANGED_LINKS",
        ];
        let argv: Vec<&str> = std::iter::once("printenv").chain(vars).collect();
        let mut first = installed("a");
        first.previous = Some(PathBuf::from("/store/v.a.0012"));
        let run = run(&hook(&argv, false, TIMEOUT), &[first, installed("b")]).unwrap();
        assert!(run.success(), "{run:?}");
        assert_eq!(
            run.output_tail,
            "/store/v.a\n/store/v.a.0123\n0123\nhttps://v.vault.azure.net/secrets/a\n/store/v.a.0012\n/store/v.a\n\
             /store/v.b\n"
        );
    }

    #[test]
    #[cfg(unix)]
    fn the_version_folder_is_in_kvvm_certificate_dir_only_when_there_is_one() {
        let check = |dir: Option<&str>| {
            let mut first = installed("a");
            first.dir = dir.map(PathBuf::from);
            let line = "echo \"${KVVM_CERTIFICATE_DIR-unset}\"";
            run(&hook(&[line], true, TIMEOUT), &[first])
                .unwrap()
                .output_tail
        };
        assert_eq!(check(Some("/store/v.a.d")), "/store/v.a.d\n");
        assert_eq!(check(None), "unset\n");
    }

    #[test]
    #[cfg(unix)]
    fn shell_metacharacters_are_literal_unless_shell_is_asked() {
        let literal = run(&hook(&["/bin/echo", "$HOME;", "x"], false, TIMEOUT), &[]).unwrap();
        assert_eq!(literal.output_tail, "$HOME; x\n");
        let shelled = run(
            &hook(&["echo one; echo two >&2; exit 3"], true, TIMEOUT),
            &[],
        )
        .unwrap();
        assert_eq!(shelled.exit_code, Some(3));
        assert!(shelled.output_tail.contains("one") && shelled.output_tail.contains("two"));
        assert!(
            shelled
                .summary(&hook(&["x"], true, TIMEOUT))
                .contains("exited with 3")
        );
    }

    #[test]
    #[cfg(unix)]
    fn a_hung_command_and_its_children_are_killed_at_the_timeout() {
        let h = hook(
            &["sleep 30 & echo started; wait"],
            true,
            Duration::from_millis(300),
        );
        let run = run(&h, &[]).unwrap();
        assert!(run.timed_out && !run.success());
        assert!(run.duration < Duration::from_secs(10), "{:?}", run.duration);
        assert!(run.summary(&h).contains("timed out"), "{}", run.summary(&h));
        assert!(run.output_tail.contains("started"));
    }

    #[test]
    #[cfg(unix)]
    fn only_the_tail_of_long_output_is_kept() {
        let run = run(&hook(&["seq 1 100000"], true, TIMEOUT), &[]).unwrap();
        assert!(run.output_tail.len() <= OUTPUT_TAIL);
        assert!(run.output_tail.ends_with("99999\n100000\n"));
    }

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let err = run(&hook(&["/nonexistent/reload"], false, TIMEOUT), &[]).unwrap_err();
        assert!(matches!(err, HookError::Spawn { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("post-install command \"/nonexistent/reload\" could not be started")
        );
    }

    #[test]
    fn each_distinct_command_runs_once_per_cycle() {
        let reload = hook(&["systemctl", "reload", "nginx"], false, TIMEOUT);
        let other = hook(&["/usr/local/bin/notify"], false, TIMEOUT);
        let p = plan([
            (&reload, installed("a")),
            (&other, installed("b")),
            (&reload, installed("c")),
        ]);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].0, reload);
        assert_eq!(
            p[0].1
                .iter()
                .map(|i| i.link.display().to_string())
                .collect::<Vec<_>>(),
            ["/store/v.a", "/store/v.c"]
        );
    }

    #[test]
    #[cfg(windows)]
    fn on_windows_the_line_runs_in_cmd_with_the_certificate_in_its_environment() {
        let mut cert = installed("a");
        cert.file =
            PathBuf::from(r"Cert:\LocalMachine\MY\0A1B2C3D4E5F60718293A4B5C6D7E8F901234567");
        cert.previous = Some(PathBuf::from(
            r"Cert:\LocalMachine\MY\FFEEDDCCBBAA99887766554433221100FFEEDDCC",
        ));
        let run = run(
            &hook(
                &[
                    "echo %KVVM_CERTIFICATE_VERSION%^|%KVVM_CERTIFICATE_URL%^|%KVVM_CERTIFICATE_THUMBPRINT%^|\
                     %KVVM_PREVIOUS_THUMBPRINT% & echo two 1>&2 & exit /B 3",
                ],
                true,
                TIMEOUT,
            ),
            &[cert],
        )
        .unwrap();
        assert_eq!(run.exit_code, Some(3), "{run:?}");
        assert!(
            run.output_tail.contains(
                "0123|https://v.vault.azure.net/secrets/a|0A1B2C3D4E5F60718293A4B5C6D7E8F901234567|\
                 FFEEDDCCBBAA99887766554433221100FFEEDDCC"
            ),
            "{run:?}"
        );
        assert!(run.output_tail.contains("two"), "{run:?}");
    }

    #[test]
    #[cfg(windows)]
    fn on_windows_a_hung_command_and_what_it_started_are_killed_at_the_timeout() {
        // Two busy loops: cmd's own, and one in a second cmd it starts in the background, which holds the
        // output pipes too (if it lived on, reading the output would never end).
        let h = hook(
            &[
                r#"start /B cmd /C "for /L %i in (1,0,2) do @rem" & echo started & for /L %i in (1,0,2) do @rem"#,
            ],
            true,
            Duration::from_millis(1500),
        );
        let run = run(&h, &[]).unwrap();
        assert!(run.timed_out && !run.success(), "{run:?}");
        assert!(run.duration < Duration::from_secs(20), "{:?}", run.duration);
        assert!(run.output_tail.contains("started"), "{run:?}");
    }
}
