//! The post-install commands of a burst of installs: each distinct command runs once for all the certificates it
//! is configured for that changed (`hook::plan`), and what it did goes into their records.

use crate::hook;
use crate::settings::ObservedCertificate;
use crate::state::CertificateState;
use crate::sync::{Checked, SyncError};

/// A certificate whose new version was installed, waiting for its post-install command.
pub(super) struct Change {
    hook: hook::Hook,
    installed: hook::Installed,
}

/// What a batch of post-install commands did: per command, the certificates it ran for, its summary, success.
pub(super) type HookResults = Vec<(Vec<String>, String, bool)>;

/// Runs each distinct command once for the certificates in `changes`.
pub(super) fn run(changes: Vec<Change>) -> HookResults {
    let plan = hook::plan(changes.iter().map(|c| (&c.hook, c.installed.clone())));
    plan.into_iter()
        .map(|(command, installed)| {
            let (ok, summary) = match hook::run(&command, &installed) {
                Ok(run) => (run.success(), run.summary(&command)),
                Err(e) => (false, e.to_string()),
            };
            if ok {
                log::info!("{summary}");
            } else {
                log::error!("{summary}");
            }
            (installed.into_iter().map(|i| i.url).collect(), summary, ok)
        })
        .collect()
}

/// Records what the post-install commands did in the certificates they ran for.
pub(super) fn record(certs: &mut [CertificateState], results: &HookResults) {
    for (urls, summary, ok) in results {
        for state in certs.iter_mut().filter(|c| urls.contains(&c.url)) {
            state.post_install_ran(summary, *ok);
        }
    }
}

/// The post-install command of a check that installed a new version (which replaced `previous`), if it has one.
pub(super) fn change_of(
    cert: &ObservedCertificate,
    result: Result<&Checked, &SyncError>,
    previous: Option<&std::path::Path>,
) -> Option<Change> {
    match (result, &cert.post_install) {
        (Ok(c), Some(h)) if c.changed => Some(Change {
            hook: h.clone(),
            installed: hook::Installed {
                url: cert.url.to_string(),
                link: c.link.clone(),
                file: c.file.clone(),
                version: c.version.clone(),
                dir: c.folder.clone(),
                previous: previous.map(std::path::Path::to_path_buf),
            },
        }),
        _ => None,
    }
}
