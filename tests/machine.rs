//! The machine harness (`kvvm_sim::machine`) for real: systemd boots as PID 1 of private namespaces on an
//! overlay of `/` with the VM setup in place, its network is its own (and the test process can serve it), its
//! disk survives a reboot while `/tmp` does not, an enabled service starts at every boot, and the host's
//! `/tmp` is left alone (the trap of REFERENCE §6). Each test boots its own machines on its own disk, so they
//! run in parallel; each skips, saying why, where the harness cannot run (not root, no systemd...).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use kvvm_sim::machine::{self, Disk, Machine, Setup};

/// Bound on a boot (they take about a second here).
const BOOT: Duration = Duration::from_secs(30);

/// Whether the harness can run; prints the SKIP line when not.
fn available(test: &str) -> bool {
    match machine::unavailable() {
        Some(why) => {
            println!("SKIP {test}: {why}");
            false
        }
        None => true,
    }
}

/// Boots on `disk` and waits until the boot is over (running or degraded); prints how long it took.
fn boot(disk: &Disk, setup: &Setup) -> Machine {
    let start = Instant::now();
    let m = Machine::boot(disk, setup).expect("boot a machine");
    let state = m.wait_booted(BOOT).expect("the machine boots");
    println!("booted ({state}) in {:?}", start.elapsed());
    if state != "running" {
        println!("failed units:\n{}", m.failed_units());
    }
    m
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Runs `argv` inside, asserts it succeeded, returns its stdout (trimmed).
fn ok(m: &Machine, argv: &[&str]) -> String {
    let o = m.run(argv).expect("run a command in the machine");
    assert!(
        o.status.success(),
        "{argv:?} failed in the machine ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    text(&o)
}

/// Runs the shell `script` inside; its stdout (trimmed), whatever its status.
fn sh(m: &Machine, script: &str) -> String {
    text(&m.sh(script).expect("run a shell in the machine"))
}

#[test]
fn boots_with_the_vm_setup() {
    if !available("boots_with_the_vm_setup") {
        return;
    }
    let disk = Disk::new().unwrap();
    let m = boot(&disk, &Setup::new());

    assert_eq!(ok(&m, &["cat", "/proc/1/comm"]), "systemd", "PID 1 inside");
    assert_eq!(ok(&m, &["systemctl", "is-active", "dbus"]), "active");
    assert_eq!(
        ok(&m, &["systemd-detect-virt", "--container"]),
        "container-other"
    );
    let hosts = ok(&m, &["getent", "hosts", "myvault.vault.azure.net"]);
    assert!(
        hosts.starts_with("127.0.0.1 "),
        "myvault.vault.azure.net inside: {hosts:?}"
    );
    assert!(
        ok(&m, &["getent", "hosts", "localhost"]).contains("localhost"),
        "localhost is kept in /etc/hosts"
    );
    let lo = ok(&m, &["ip", "-4", "-o", "addr", "show", "dev", "lo"]);
    assert!(lo.contains("169.254.169.254/32"), "lo inside: {lo}");
    let links = ok(&m, &["ip", "-o", "link"]);
    assert_eq!(links.lines().count(), 1, "only lo inside: {links}");

    // nginx is enabled on the host and would take port 80 from the fake IMDS.
    assert_eq!(sh(&m, "systemctl is-enabled nginx.service"), "masked");
    assert_eq!(sh(&m, "systemctl is-active nginx.service"), "inactive");

    let bundle = std::fs::read_to_string(m.path(Path::new("/etc/ssl/certs/ca-certificates.crt")))
        .expect("read the machine's CA bundle through its root");
    assert!(
        bundle.contains(kvvm_sim::netns::test_ca().ca_pem().trim()),
        "the test CA is in the machine's CA bundle"
    );
    m.kill().expect("the machine is gone without leftovers");
}

#[test]
fn host_tmp_is_untouched() {
    if !available("host_tmp_is_untouched") {
        return;
    }
    // In the host's /tmp, where the trap struck; removed when the test ends, whatever the outcome.
    let marker = tempfile::Builder::new()
        .prefix("kvvm-host-tmp-marker-")
        .tempfile_in(std::env::temp_dir())
        .unwrap();
    std::fs::write(marker.path(), "host").unwrap();
    let name = marker
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();

    let disk = Disk::new().unwrap();
    let m = boot(&disk, &Setup::new());
    let systemd = m.pid();
    // What keeps the host safe: `/` is an overlay (writes go to the disk), the temporary dirs are tmpfs.
    for (dir, fstype) in [
        ("/", "overlay"),
        ("/tmp", "tmpfs"),
        ("/var/tmp", "tmpfs"),
        ("/run", "tmpfs"),
    ] {
        assert_eq!(
            ok(&m, &["findmnt", "-n", "-o", "FSTYPE", "--mountpoint", dir]),
            fstype,
            "{dir} inside"
        );
    }
    assert_eq!(
        sh(
            &m,
            &format!("test -e /tmp/{name} && echo seen || echo absent")
        ),
        "absent",
        "the machine's /tmp is its own"
    );
    // What emptied the host's /tmp in the trap, run again on purpose.
    let o = m
        .run(&["systemd-tmpfiles", "--create", "--remove", "--boot"])
        .unwrap();
    println!("systemd-tmpfiles: {}", o.status);
    assert!(
        marker.path().exists(),
        "the host's /tmp marker is gone after boot"
    );

    m.kill().expect("the machine is gone without leftovers");
    assert!(
        !Path::new(&format!("/proc/{systemd}")).exists(),
        "systemd (pid {systemd}) still runs after kill"
    );
    assert_eq!(
        std::fs::read_to_string(marker.path()).ok().as_deref(),
        Some("host"),
        "the host's /tmp marker after kill"
    );
}

#[test]
fn disk_survives_a_reboot_tmp_does_not() {
    if !available("disk_survives_a_reboot_tmp_does_not") {
        return;
    }
    let disk = Disk::new().unwrap();
    let m = boot(&disk, &Setup::new());
    ok(
        &m,
        &[
            "/bin/sh",
            "-c",
            "echo hi > /var/lib/marker && echo tmp > /tmp/t && echo run > /run/r",
        ],
    );
    let again = Machine::boot(&disk, &Setup::new());
    assert!(again.is_err(), "a second machine booted on a disk in use");
    m.kill().expect("the machine is gone without leftovers");
    assert_eq!(
        std::fs::read_to_string(disk.upper().join("var/lib/marker")).unwrap(),
        "hi\n",
        "the disk keeps what the machine wrote"
    );

    let m = boot(&disk, &Setup::new());
    assert_eq!(ok(&m, &["cat", "/var/lib/marker"]), "hi");
    assert_eq!(
        sh(&m, "ls /tmp/t /run/r 2>/dev/null; echo end"),
        "end",
        "/tmp and /run are fresh after a reboot"
    );
    m.kill().expect("the machine is gone without leftovers");
}

#[test]
fn serves_the_machine_from_the_test_process() {
    if !available("serves_the_machine_from_the_test_process") {
        return;
    }
    let disk = Disk::new().unwrap();
    let m = boot(&disk, &Setup::new());

    // The same port on the host's loopback and on the machine's: a free one of the host's (other tests may
    // hold 8080 on the host), free inside anyway.
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    host.set_nonblocking(true).unwrap();
    let port = host.local_addr().unwrap().port();
    let inside = m
        .in_network(move || TcpListener::bind(("127.0.0.1", port)))
        .expect("enter the machine's network")
        .expect("bind the machine's 127.0.0.1 from the test process");
    let server = std::thread::spawn(move || {
        let (mut conn, _) = inside.accept().unwrap();
        let mut got = String::new();
        conn.read_to_string(&mut got).unwrap();
        got
    });
    let send = format!("echo x > /dev/tcp/127.0.0.1/{port}");
    ok(&m, &["/bin/bash", "-c", &send]);
    assert_eq!(server.join().unwrap(), "x\n");
    assert_eq!(
        host.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::WouldBlock),
        "the machine reached the host's loopback"
    );
    // Nobody listens inside any more: the host's listener on that port is no help.
    let o = m.run(&["/bin/bash", "-c", &send]).unwrap();
    assert!(
        !o.status.success(),
        "the machine connected to 127.0.0.1:{port} with only the host listening there"
    );

    // The fake IMDS' address, served from here.
    let imds = m
        .in_network(|| TcpListener::bind("169.254.169.254:80"))
        .unwrap()
        .expect("bind 169.254.169.254:80 in the machine (nginx would hold it)");
    let server = std::thread::spawn(move || {
        let (mut conn, _) = imds.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf).unwrap();
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
            .unwrap();
    });
    if ok(&m, &["sh", "-c", "command -v curl || true"]).is_empty() {
        println!("no curl in the machine: IMDS reached by bash only");
        ok(
            &m,
            &["/bin/bash", "-c", "echo GET > /dev/tcp/169.254.169.254/80"],
        );
    } else {
        assert_eq!(
            ok(
                &m,
                &["curl", "-sS", "-m", "10", "http://169.254.169.254/metadata"]
            ),
            "hello"
        );
    }
    server.join().unwrap();
    m.kill().expect("the machine is gone without leftovers");
}

const PROBE: &str = "kvvm-probe.service";
const PROBE_UNIT: &str = "\
[Unit]
Description=kvvm machine harness probe

[Service]
ExecStart=/bin/sh -c 'echo started >> /var/lib/kvvm-probe.log; exec sleep infinity'

[Install]
WantedBy=multi-user.target
";

#[test]
fn enabled_service_runs_after_boot_and_reboot() {
    if !available("enabled_service_runs_after_boot_and_reboot") {
        return;
    }
    let disk = Disk::new().unwrap();
    let setup = Setup::new()
        .file(format!("/etc/systemd/system/{PROBE}"), PROBE_UNIT, 0o644)
        .enable(PROBE);
    let m = boot(&disk, &setup);
    assert_eq!(sh(&m, &format!("systemctl is-enabled {PROBE}")), "enabled");
    assert_eq!(
        sh(&m, &format!("systemctl is-active {PROBE}")),
        "active",
        "journal: {}",
        m.journal(PROBE)
    );
    assert_eq!(ok(&m, &["cat", "/var/lib/kvvm-probe.log"]), "started");
    let main: u32 = ok(
        &m,
        &["systemctl", "show", "-p", "MainPID", "--value", PROBE],
    )
    .parse()
    .unwrap();
    let host = m.host_pid(main).expect("the service's host pid");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{host}/comm"))
            .unwrap()
            .trim(),
        "sleep"
    );
    assert!(
        m.journal(PROBE).contains("kvvm machine harness probe"),
        "the journal has the unit's start: {}",
        m.journal(PROBE)
    );
    m.kill().expect("the machine is gone without leftovers");

    // The reboot applies no unit: the disk has it, and its enablement.
    let m = boot(&disk, &Setup::new());
    assert_eq!(
        sh(&m, &format!("systemctl is-active {PROBE}")),
        "active",
        "after the reboot; journal: {}",
        m.journal(PROBE)
    );
    assert_eq!(
        ok(&m, &["cat", "/var/lib/kvvm-probe.log"]),
        "started\nstarted",
        "it started once per boot"
    );
    m.kill().expect("the machine is gone without leftovers");
}
