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
    let out = Command::new("sh")
        .arg("-n")
        .arg(root().join("handler"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(root().join("handler")).unwrap();
    assert!(text.starts_with("#!/bin/sh\n"));
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

/// The zip waagent downloads: manifest at the root, the entry script, and a binary that runs on glibc 2.17
/// (Ubuntu 18.04 has 2.27, SUSE 15 has 2.26; 2.17 leaves room for every supported distro).
#[test]
fn package_zip_has_the_layout_and_glibc_baseline() {
    let zip = root().join("dist").join(format!(
        "Microsoft.Azure.KeyVault.KeyVaultForLinux-{}.zip",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(
        zip.is_file(),
        "{} is missing: run `make package` first (make test does)",
        zip.display()
    );
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
    assert_eq!(names, ["HandlerManifest.json", "bin/kvvm", "handler"]);

    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("unzip")
        .arg("-q")
        .arg(&zip)
        .arg("-d")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let bin = dir.path().join("bin/kvvm");
    let check = Command::new("bash")
        .arg(root().join("scripts/glibc-check.sh"))
        .arg(&bin)
        .arg("2.17")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{said}");
    assert!(said.contains("needs GLIBC_2."), "{said}");
    // Stripped: no symbol table left.
    let nm = Command::new("nm").arg(&bin).output().unwrap();
    assert!(
        String::from_utf8_lossy(&nm.stderr).contains("no symbols"),
        "binary is not stripped"
    );
    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("kvvm {}", env!("CARGO_PKG_VERSION"))
    );
}
