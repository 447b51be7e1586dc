//! The package's fixed files: what waagent and the publisher's registration read.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn manifest_xml_version_matches_cargo() {
    let xml = std::fs::read_to_string(root().join("manifest/manifest.xml")).unwrap();
    let version = xml
        .split("<Version>")
        .nth(1)
        .and_then(|s| s.split("</Version>").next())
        .unwrap();
    assert_eq!(
        version,
        env!("CARGO_PKG_VERSION"),
        "bump manifest/manifest.xml with Cargo.toml"
    );
    for needle in [
        "<ProviderNameSpace>Microsoft.Azure.KeyVault</ProviderNameSpace>",
        "<Type>KeyVaultForLinux</Type>",
        "<SupportedOS>Linux</SupportedOS>",
        "<IsJsonExtension>true</IsJsonExtension>",
        "<CompanyName>",
        "<Label>",
        "<Description>",
    ] {
        assert!(xml.contains(needle), "manifest.xml lacks {needle}");
    }
}

#[test]
fn handler_manifest_names_every_verb_and_heartbeat() {
    let text = std::fs::read_to_string(root().join("HandlerManifest.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let m = &doc[0]["handlerManifest"];
    for verb in ["install", "uninstall", "update", "enable", "disable"] {
        assert_eq!(
            m[format!("{verb}Command")],
            format!("handler {verb}"),
            "{verb}"
        );
    }
    assert_eq!(m["reportHeartbeat"], true);
    assert_eq!(m["rebootAfterInstall"], false);
    assert_eq!(m["updateMode"], "UpdateWithInstall");
}

#[test]
fn handler_script_is_posix_sh() {
    // `handler`, and bin/kvvm (scripts/bin-kvvm.sh), which picks the build for the machine's architecture.
    for script in ["handler", "scripts/bin-kvvm.sh"] {
        let out = Command::new("sh")
            .arg("-n")
            .arg(root().join(script))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(root().join(script)).unwrap();
        assert!(text.starts_with("#!/bin/sh\n"), "{script}");
    }
}

/// The handler runs the binary beside it whatever cwd and PATH it is started with.
#[test]
fn handler_script_finds_its_binary_from_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let ext = dir.path().join("ext dir");
    std::fs::create_dir_all(ext.join("bin")).unwrap();
    std::fs::copy(root().join("handler"), ext.join("handler")).unwrap();
    std::fs::write(
        ext.join("bin/kvvm"),
        "#!/bin/sh\necho \"args=$* cwd=$(pwd -P) ext=$AZURE_GUEST_AGENT_EXTENSION_PATH\"\n",
    )
    .unwrap();
    for f in ["handler", "bin/kvvm"] {
        Command::new("chmod")
            .arg("u+x")
            .arg(ext.join(f))
            .status()
            .unwrap();
    }
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("'{}' enable", ext.join("handler").display()))
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let ext = std::fs::canonicalize(&ext).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("args=enable cwd={0} ext={0}", ext.display())
    );
}

/// The zip waagent downloads: manifest at the root, the entry script, the architecture switch `bin/kvvm`, and
/// an x86_64 and an aarch64 binary that run on glibc 2.17 (Ubuntu 18.04 has 2.27, SUSE 15 has 2.26; 2.17 leaves
/// room for every supported distro).
#[test]
fn package_zip_has_the_layout_and_glibc_baseline() {
    let zip = kvvm_sim::built_package();
    let out = Command::new("unzip")
        .arg("-Z1")
        .arg(&zip)
        .output()
        .expect("unzip is installed by make deps");
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "HandlerManifest.json",
            "bin/kvvm",
            "bin/kvvm-aarch64",
            "bin/kvvm-x86_64",
            "handler"
        ]
    );

    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("unzip")
        .arg("-q")
        .arg(&zip)
        .arg("-d")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    for (arch, machine) in [("x86_64", "X86-64"), ("aarch64", "AArch64")] {
        let bin = dir.path().join(format!("bin/kvvm-{arch}"));
        let check = Command::new("bash")
            .arg(root().join("scripts/glibc-check.sh"))
            .arg(&bin)
            .arg("2.17")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&check.stdout).to_string()
            + &String::from_utf8_lossy(&check.stderr);
        assert!(check.status.success(), "{arch}: {said}");
        assert!(said.contains("needs GLIBC_2."), "{arch}: {said}");
        // The right machine, and stripped: no symbol table left (readelf reads either architecture).
        let header = Command::new("readelf")
            .args(["--file-header", "--section-headers", "--wide"])
            .arg(&bin)
            .output()
            .unwrap();
        let header = String::from_utf8_lossy(&header.stdout);
        assert!(
            header
                .lines()
                .any(|l| l.trim_start().starts_with("Machine:") && l.contains(machine)),
            "{arch}: {header}"
        );
        assert!(
            !header.contains(".symtab"),
            "{arch}: binary is not stripped"
        );
    }
    // bin/kvvm runs the build for this machine.
    let version = Command::new(dir.path().join("bin/kvvm"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!(
            "kvvm {} ({})",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::ARCH
        )
    );
}

/// Both architectures' binaries fit the package budget waagent downloads to every VM.
#[test]
fn package_zip_with_both_architectures_stays_under_3_mib() {
    let zip = kvvm_sim::built_package();
    let size = std::fs::metadata(&zip).unwrap().len();
    assert!(
        size <= 3 * 1024 * 1024,
        "{} is {size} bytes, more than 3 MiB",
        zip.display()
    );
}
