//! The standalone service's packages as `make package` leaves them in dist/: the .deb for amd64 and arm64 (linted
//! with lintian), the .rpm for x86_64 and aarch64 (listed and unpacked with rpm), which must install the same
//! files with the same binary, and the VM Application tarball. What they do when installed is in
//! tests/systemd.rs; here is what they are.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use kvvm_sim::dist;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// (deb architecture, rpm architecture, `uname -m` of the build inside)
const ARCHS: [(&str, &str, &str); 2] = [
    ("amd64", "x86_64", "x86-64"),
    ("arm64", "aarch64", "ARM aarch64"),
];

fn deb(arch: &str) -> PathBuf {
    dist(&format!("kvvm_{VERSION}-1_{arch}.deb"))
}

fn rpm(arch: &str) -> PathBuf {
    dist(&format!("kvvm-{VERSION}-1.{arch}.rpm"))
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (make deps installs it)"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The files a package installs, for the comparison of the two formats: documentation each format keeps in
/// its own place (Debian's copyright and changelog, lintian's overrides; rpm's license folder) aside.
fn installed_files(listing: &str) -> BTreeSet<String> {
    listing
        .lines()
        .map(|l| l.trim_start_matches('.').to_string())
        .filter(|l| !l.is_empty() && !l.ends_with('/'))
        .filter(|l| {
            ![
                "/usr/share/doc/kvvm/copyright",
                "/usr/share/doc/kvvm/changelog.Debian.gz",
                "/usr/share/lintian/overrides/kvvm",
                "/usr/share/licenses/kvvm/LICENSE",
            ]
            .contains(&l.as_str())
        })
        .collect()
}

#[test]
fn the_debs_are_lintian_clean() {
    for (arch, _, _) in ARCHS {
        let deb = deb(arch);
        let out = Command::new("lintian")
            .args(["--fail-on", "error,warning", "--no-tag-display-limit"])
            .arg(&deb)
            .output()
            .expect("lintian (make deps installs it)");
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && report.trim().is_empty(),
            "lintian on {}:\n{report}{}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_debs_install_the_service_its_settings_and_its_docs() {
    let unit = fs::read_to_string(root().join("packaging/kvvm.service")).unwrap();
    for (arch, _, machine) in ARCHS {
        let deb = deb(arch);
        let deb = deb.to_str().unwrap();
        let control = run("dpkg-deb", &["-f", deb]);
        for field in [
            "Package: kvvm",
            &format!("Version: {VERSION}-1"),
            &format!("Architecture: {arch}"),
            "Depends: libacl1, libc6 (>= 2.17)",
        ] {
            assert!(control.contains(field), "{deb}: no {field:?} in\n{control}");
        }
        let listing = run("dpkg-deb", &["-c", deb]);
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("-rwxr-xr-x 0/0") && l.ends_with("./usr/bin/kvvm")),
            "{listing}"
        );
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("-rw------- 0/0")
                    && l.ends_with("./etc/kvvm/settings.json")),
            "the settings are root's only: {listing}"
        );
        let dir = tempfile::tempdir().unwrap();
        run("dpkg-deb", &["-x", deb, dir.path().to_str().unwrap()]);
        run(
            "dpkg-deb",
            &["-e", deb, dir.path().join("DEBIAN").to_str().unwrap()],
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("DEBIAN/conffiles")).unwrap(),
            "/etc/kvvm/settings.json\n"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("usr/lib/systemd/system/kvvm.service")).unwrap(),
            unit
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("etc/kvvm/settings.json")).unwrap(),
            "{}\n"
        );
        // The maintainer scripts enable and start the unit, stop it on removal, and clean up on purge only.
        let postinst = fs::read_to_string(dir.path().join("DEBIAN/postinst")).unwrap();
        assert!(
            postinst.contains("deb-systemd-helper enable kvvm.service"),
            "{postinst}"
        );
        assert!(postinst.contains("deb-systemd-invoke $_dh_action kvvm.service"));
        assert!(!postinst.contains("#DEBHELPER#"));
        let prerm = fs::read_to_string(dir.path().join("DEBIAN/prerm")).unwrap();
        assert!(
            prerm.contains("deb-systemd-invoke stop kvvm.service"),
            "{prerm}"
        );
        let postrm = fs::read_to_string(dir.path().join("DEBIAN/postrm")).unwrap();
        assert!(postrm.contains("rm -f \"/var/lib/kvvm/$f\""), "{postrm}");
        // The binary is the build for the architecture.
        let kind = run("file", &[dir.path().join("usr/bin/kvvm").to_str().unwrap()]);
        assert!(kind.contains(machine), "{arch}: {kind}");
    }
}

#[test]
fn each_rpm_installs_the_same_files_and_binary_as_the_deb() {
    for (deb_arch, rpm_arch, _) in ARCHS {
        let deb = deb(deb_arch);
        let rpm = rpm(rpm_arch);
        let rpm = rpm.to_str().unwrap();
        let deb_files = installed_files(
            &run("dpkg-deb", &["-c", deb.to_str().unwrap()])
                .lines()
                .filter_map(|l| l.split_whitespace().last())
                .collect::<Vec<_>>()
                .join("\n"),
        );
        let rpm_files = installed_files(&run("rpm", &["-qlp", rpm]));
        assert_eq!(deb_files, rpm_files, "{rpm} and {}", deb.display());
        let info = run("rpm", &["-qip", rpm]);
        assert!(
            info.contains(&format!("Architecture: {rpm_arch}")),
            "{info}"
        );
        assert!(info.contains("License     : MIT"), "{info}");
        assert_eq!(run("rpm", &["-qpc", rpm]), "/etc/kvvm/settings.json\n");
        let requires = run("rpm", &["-qpR", rpm]);
        assert!(requires.lines().any(|l| l == "glibc >= 2.17"), "{requires}");
        let scripts = run("rpm", &["-qp", "--scripts", rpm]);
        assert!(
            scripts.contains("systemctl enable --now kvvm.service"),
            "{scripts}"
        );
        assert!(
            scripts.contains("systemctl disable --now kvvm.service"),
            "{scripts}"
        );
        // Installed (into a scratch root, with rpm's own database), it holds the very binary and unit of the .deb,
        // and rpm knows the package.
        let r = tempfile::tempdir().unwrap();
        let root_dir = r.path().to_str().unwrap();
        run("rpm", &["--root", root_dir, "--initdb"]);
        run(
            "rpm",
            &[
                "--root",
                root_dir,
                "-i",
                "--nodeps",
                "--noscripts",
                "--nosignature",
                "--ignorearch",
                rpm,
            ],
        );
        assert_eq!(
            run("rpm", &["--root", root_dir, "-q", "kvvm"]).trim(),
            format!("kvvm-{VERSION}-1.{rpm_arch}")
        );
        let d = tempfile::tempdir().unwrap();
        run(
            "dpkg-deb",
            &["-x", deb.to_str().unwrap(), d.path().to_str().unwrap()],
        );
        for file in [
            "usr/bin/kvvm",
            "usr/lib/systemd/system/kvvm.service",
            "etc/kvvm/settings.json",
        ] {
            assert_eq!(
                fs::read(r.path().join(file)).unwrap(),
                fs::read(d.path().join(file)).unwrap(),
                "{file}"
            );
        }
    }
}

#[test]
fn the_shipped_settings_watch_nothing_and_the_example_is_valid() {
    use kvvm::settings::Configured;
    let shipped = fs::read_to_string(root().join("packaging/settings.json")).unwrap();
    assert!(matches!(
        kvvm::parse::parse_service_settings(&shipped),
        Ok(Configured::Nothing { .. })
    ));
    let example = fs::read_to_string(root().join("packaging/settings.example.json")).unwrap();
    match kvvm::parse::parse_service_settings(&example) {
        Ok(Configured::Settings(s)) => {
            assert!(s.warnings.is_empty(), "{:?}", s.warnings);
            assert!(s.require_initial_sync);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_vm_application_package_holds_its_script_and_the_four_packages() {
    let tarball = dist(&format!("kvvm-vmapp-{VERSION}.tar.gz"));
    let listing = run("tar", &["-tvzf", tarball.to_str().unwrap()]);
    let names: BTreeSet<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|n| !n.ends_with('/'))
        .collect();
    let want: BTreeSet<String> = [
        "kvvm/vmapp.sh".to_string(),
        format!("kvvm/kvvm_{VERSION}-1_amd64.deb"),
        format!("kvvm/kvvm_{VERSION}-1_arm64.deb"),
        format!("kvvm/kvvm-{VERSION}-1.x86_64.rpm"),
        format!("kvvm/kvvm-{VERSION}-1.aarch64.rpm"),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        names,
        want.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x 0/0") && l.ends_with("kvvm/vmapp.sh")),
        "{listing}"
    );
    // The manage actions of the samples use exactly these names.
    let actions: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(root().join("docs/deploy/vmapp/manage-actions.json")).unwrap(),
    )
    .unwrap();
    for action in ["install", "update", "remove"] {
        assert!(
            actions[action]
                .as_str()
                .unwrap()
                .starts_with("tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh "),
            "{action}"
        );
    }
    let out = Command::new("bash")
        .arg("-n")
        .arg(root().join("packaging/vmapp/vmapp.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_publisher_gets_its_own_names_in_the_manifest() {
    let manifest = |args: &[&str]| {
        Command::new("bash")
            .arg(root().join("scripts/manifest.sh"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = manifest(&["Contoso.Security", "KeyVaultForLinux", "1.2.3"]);
    assert!(out.status.success());
    let xml = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "<ProviderNameSpace>Contoso.Security</ProviderNameSpace>",
        "<Type>KeyVaultForLinux</Type>",
        "<Version>1.2.3</Version>",
    ] {
        assert!(xml.contains(needle), "{xml}");
    }
    assert!(!xml.contains("Microsoft.Azure.KeyVault"), "{xml}");
    // The default is Microsoft's name, as the zip in dist/ has it.
    dist(&format!(
        "Microsoft.Azure.KeyVault.KeyVaultForLinux-{VERSION}.manifest.xml"
    ));
    for bad in [
        &["Contoso Security", "KeyVaultForLinux", "1.0.0"][..],
        &["Contoso.Security", "", "1.0.0"],
        &["Contoso..Security", "KeyVaultForLinux", "1.0.0"],
        &["Contoso.Security", "Key/Vault", "1.0.0"],
        &["Contoso.Security", "KeyVaultForLinux", "1.0.x"],
    ] {
        let out = manifest(bad);
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("manifest: "),
            "{bad:?}"
        );
    }
}
