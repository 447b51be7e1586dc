//! Tests of the test doubles themselves (kvvm-sim): the fake Key Vault and IMDS must behave like the real
//! services, or kvvm's tests prove nothing. They run in-process on port 0 with a tiny raw HTTP client, so
//! every header and status is visible; one test also exercises the network-namespace harness.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use kvvm_sim::httpserver::Reply;
use kvvm_sim::imds::{FakeImds, TokenAuthority};
use kvvm_sim::netns::{run_isolated, test_ca};
use kvvm_sim::vault::{ChallengeResource, FakeVault, SecretValue};
use serde_json::Value;

const HOST: &str = "myvault.vault.azure.net";
const VAULT_NAMES: &[&str] = kvvm_sim::netns::DEFAULT_HOSTS;

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// One keep-alive connection, plain or TLS (SNI = `host`).
struct Client {
    host: String,
    io: BufReader<Box<dyn Stream>>,
}

impl Client {
    fn tls(addr: SocketAddr, host: &str) -> Client {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
        let conn = rustls::ClientConnection::new(test_ca().client_config(), name).unwrap();
        Client {
            host: host.into(),
            io: BufReader::new(Box::new(rustls::StreamOwned::new(conn, tcp))),
        }
    }
    fn plain(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            host: addr.to_string(),
            io: BufReader::new(Box::new(tcp)),
        }
    }
    fn send(&mut self, target: &str, headers: &[(&str, &str)]) -> std::io::Result<Resp> {
        let mut req = format!("GET {target} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.io.get_mut().write_all(req.as_bytes())?;
        self.io.get_mut().flush()?;
        let mut line = String::new();
        if self.io.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.io.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.io.read_exact(&mut body)?;
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
    fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> Resp {
        self.send(target, headers).unwrap()
    }
}

struct Fakes {
    tokens: TokenAuthority,
    imds: FakeImds,
    vault: FakeVault,
}

fn start() -> Fakes {
    let tokens = TokenAuthority::new();
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let imds = FakeImds::start(local, tokens.clone()).unwrap();
    let vault =
        FakeVault::start(local, test_ca().server_config(VAULT_NAMES), tokens.clone()).unwrap();
    Fakes {
        tokens,
        imds,
        vault,
    }
}

fn token_for(f: &Fakes, resource: &str) -> String {
    let target =
        format!("/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}");
    let r = Client::plain(f.imds.addr()).get(&target, &[("Metadata", "true")]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["access_token"].as_str().unwrap().to_string()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn challenge_then_token_then_secret() {
    let f = start();
    let ver = f.vault.put_secret(HOST, "c1", SecretValue::pem("PEM DATA"));
    assert_eq!(ver.len(), 32);
    assert!(
        ver.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    let mut c = Client::tls(f.vault.addr(), HOST);

    let r = c.get("/secrets/c1?api-version=7.4", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        "Bearer authorization=\"https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47\", resource=\"https://vault.azure.net\""
    );
    assert_eq!(r.json()["error"]["code"], "Unauthorized");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("AKV10000")
    );

    let tok = token_for(&f, "https://vault.azure.net");
    let r = c.get(
        "/secrets/c1?api-version=7.4",
        &[("Authorization", &bearer(&tok))],
    );
    assert_eq!(r.status, 200);
    let b = r.json();
    assert_eq!(b["value"], "PEM DATA");
    assert_eq!(b["contentType"], "application/x-pem-file");
    assert_eq!(b["managed"], true);
    assert_eq!(b["id"], format!("https://{HOST}/secrets/c1/{ver}"));
    assert_eq!(b["kid"], format!("https://{HOST}/keys/c1/{ver}"));
    assert_eq!(b["attributes"]["enabled"], true);
    assert_eq!(b["attributes"]["recoveryLevel"], "Recoverable+Purgeable");
    assert_eq!(b["attributes"]["recoverableDays"], 90);

    // Trailing slash and an explicit version work; rotation makes the new version the latest.
    let ver2 = f.vault.put_secret(HOST, "c1", SecretValue::pem("PEM 2"));
    let r = c.get(
        "/secrets/c1/?api-version=7.4",
        &[("Authorization", &bearer(&tok))],
    );
    assert_eq!(r.json()["value"], "PEM 2");
    let r = c.get(
        &format!("/secrets/c1/{ver}?api-version=7.4"),
        &[("Authorization", &bearer(&tok))],
    );
    assert_eq!(r.json()["value"], "PEM DATA");
    assert_ne!(ver, ver2);

    let stats = f.vault.stats();
    assert_eq!(stats.requests, 4);
    assert_eq!(stats.requests_with_token, 3);
    assert_eq!(stats.tls_handshakes, 1, "keep-alive reuses the connection");
    assert_eq!(stats.tls_handshakes_per_sni[HOST], 1);
    let log = f.vault.requests();
    assert_eq!(log[0].bearer_token, None);
    assert_eq!(log[0].status, 401);
    assert_eq!(log[1].bearer_token.as_deref(), Some(tok.as_str()));
}

#[test]
fn tokens_are_checked() {
    let f = start();
    f.vault.put_secret(HOST, "s", SecretValue::plain("x"));
    let mut c = Client::tls(f.vault.addr(), HOST);
    let r = c.get(
        "/secrets/s?api-version=7.4",
        &[("Authorization", "Bearer made-up")],
    );
    assert_eq!(r.status, 401);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("AKV10032")
    );
    assert!(r.header("www-authenticate").is_some());

    let wrong = token_for(&f, "https://management.azure.com/");
    let r = c.get(
        "/secrets/s?api-version=7.4",
        &[("Authorization", &bearer(&wrong))],
    );
    assert_eq!(r.status, 401);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("AKV10022")
    );

    // Trailing slash and /.default forms of the resource are the same audience.
    let ok = token_for(&f, "https://vault.azure.net/");
    let r = c.get(
        "/secrets/s?api-version=7.4",
        &[("Authorization", &bearer(&ok))],
    );
    assert_eq!(r.status, 200);
    f.tokens.expire_all();
    let r = c.get(
        "/secrets/s?api-version=7.4",
        &[("Authorization", &bearer(&ok))],
    );
    assert_eq!(r.status, 401);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("TokenExpired")
    );

    // Sovereign cloud: the challenge names that cloud's resource, and a public-cloud token is refused.
    let cn = "myvault.vault.azure.cn";
    let mut c = Client::tls(f.vault.addr(), cn);
    let r = c.get("/secrets/s?api-version=7.4", &[]);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("resource=\"https://vault.azure.cn\"")
    );
    let public = token_for(&f, "https://vault.azure.net");
    let r = c.get(
        "/secrets/s?api-version=7.4",
        &[("Authorization", &bearer(&public))],
    );
    assert_eq!(r.status, 401);

    f.vault.set_challenge(
        HOST,
        ChallengeResource::Scope("https://vault.azure.net/.default".into()),
    );
    let r = Client::tls(f.vault.addr(), HOST).get("/secrets/s?api-version=7.4", &[]);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .ends_with("scope=\"https://vault.azure.net/.default\"")
    );
}

#[test]
fn errors_like_the_service() {
    let f = start();
    let tok = token_for(&f, "https://vault.azure.net");
    let auth = bearer(&tok);
    let h = [("Authorization", auth.as_str())];
    f.vault.put_secret(HOST, "s", SecretValue::plain("x"));
    let mut c = Client::tls(f.vault.addr(), HOST);

    let r = c.get("/secrets/nope?api-version=7.4", &h);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "SecretNotFound");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("A secret with (name/id) nope was not found")
    );

    let r = c.get("/secrets/s", &h);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "BadParameter");

    f.vault.deny(HOST, Some("s"));
    let r = c.get("/secrets/s?api-version=7.4", &h);
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["innererror"]["code"], "ForbiddenByRbac");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("secrets/getSecret/action")
    );
    f.vault.allow(HOST, Some("s"));

    let v2 = f.vault.put_secret(HOST, "s", SecretValue::plain("y"));
    f.vault.set_enabled(HOST, "s", &v2, false);
    let r = c.get("/secrets/s?api-version=7.4", &h);
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["innererror"]["code"], "SecretDisabled");
}

#[test]
fn paging_versions() {
    let f = start();
    let tok = token_for(&f, "https://vault.azure.net");
    let auth = bearer(&tok);
    let h = [("Authorization", auth.as_str())];
    let versions: Vec<String> = (0..30)
        .map(|i| {
            f.vault
                .put_secret(HOST, "c", SecretValue::pem(format!("v{i}")))
        })
        .collect();
    let mut c = Client::tls(f.vault.addr(), HOST);
    let r = c.get("/secrets/c/versions?api-version=7.4", &h);
    assert_eq!(r.status, 200);
    let page = r.json();
    assert_eq!(page["value"].as_array().unwrap().len(), 25);
    assert!(
        page["value"][0].get("value").is_none(),
        "list items carry no value"
    );
    assert_eq!(page["value"][0]["managed"], true);
    let next = page["nextLink"].as_str().unwrap();
    let prefix = format!("https://{HOST}:443/secrets/c/versions?api-version=7.4&%24skiptoken=");
    assert!(next.starts_with(&prefix), "{next}");
    let r = c.get(
        next.strip_prefix(&format!("https://{HOST}:443")).unwrap(),
        &h,
    );
    let page2 = r.json();
    assert_eq!(page2["value"].as_array().unwrap().len(), 5);
    assert!(page2["nextLink"].is_null());

    let mut seen = Vec::new();
    let mut target = "/secrets/c/versions?api-version=7.4&maxresults=7".to_string();
    loop {
        let p = c.get(&target, &h).json();
        for item in p["value"].as_array().unwrap() {
            seen.push(
                item["id"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string(),
            );
        }
        match p["nextLink"].as_str() {
            Some(n) => {
                assert!(n.ends_with("&maxresults=7"));
                target = n.split_once(":443").unwrap().1.to_string();
            }
            None => break,
        }
    }
    assert_eq!(seen, versions);
    assert_eq!(
        c.get("/secrets/c/versions?api-version=7.4&maxresults=26", &h)
            .status,
        400
    );
}

#[test]
fn scripted_replies() {
    let f = start();
    let tok = token_for(&f, "https://vault.azure.net");
    let auth = bearer(&tok);
    let h = [("Authorization", auth.as_str())];
    f.vault.put_secret(HOST, "s", SecretValue::plain("x"));
    f.vault.script(
        HOST,
        [
            Reply::Status(500),
            Reply::Throttle {
                retry_after: Duration::from_millis(1500),
            },
            Reply::ThrottleHttpDate {
                retry_after: Duration::from_secs(30),
            },
            Reply::Normal,
            Reply::Drop,
        ],
    );
    let mut c = Client::tls(f.vault.addr(), HOST);
    let r = c.get("/secrets/s?api-version=7.4", &h);
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (500, "InternalServerError".into())
    );
    let r = c.get("/secrets/s?api-version=7.4", &h);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.json()["error"]["code"], "Throttled");
    let r = c.get("/secrets/s?api-version=7.4", &h);
    assert_eq!(r.status, 429);
    assert!(httpdate::parse_http_date(r.header("retry-after").unwrap()).is_ok());
    assert_eq!(c.get("/secrets/s?api-version=7.4", &h).status, 200);
    assert!(
        c.send("/secrets/s?api-version=7.4", &h).is_err(),
        "Drop closes the connection"
    );
    let mut c = Client::tls(f.vault.addr(), HOST);
    assert_eq!(c.get("/secrets/s?api-version=7.4", &h).status, 200);

    // Per-secret scripts only hit that secret.
    f.vault.put_secret(HOST, "t", SecretValue::plain("y"));
    f.vault.script_secret(HOST, "t", [Reply::Status(503)]);
    assert_eq!(c.get("/secrets/s?api-version=7.4", &h).status, 200);
    assert_eq!(c.get("/secrets/t?api-version=7.4", &h).status, 503);
    assert_eq!(c.get("/secrets/t?api-version=7.4", &h).status, 200);

    // Token bucket: burst 2, then 429 with a Retry-After.
    f.vault.throttle(HOST, 0.5, 2);
    assert_eq!(c.get("/secrets/s?api-version=7.4", &h).status, 200);
    assert_eq!(c.get("/secrets/s?api-version=7.4", &h).status, 200);
    let r = c.get("/secrets/s?api-version=7.4", &h);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(
        f.vault.stats().requests_per_vault[HOST],
        f.vault.requests().len() as u64
    );
}

#[test]
fn imds_like_the_service() {
    let f = start();
    let path =
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net";
    let mut c = Client::plain(f.imds.addr());
    let r = c.get(path, &[]);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error_description"],
        "Required metadata header not specified"
    );

    let r = c.get(path, &[("Metadata", "true")]);
    assert_eq!(r.status, 200);
    let j = r.json();
    for k in [
        "access_token",
        "client_id",
        "expires_in",
        "expires_on",
        "ext_expires_in",
        "not_before",
        "resource",
    ] {
        assert!(j[k].is_string(), "{k} must be a string: {j}");
    }
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(
        j["client_id"].as_str(),
        f.imds.system_client_id().as_deref()
    );
    assert_eq!(j["expires_in"], "86400");

    let r = c.get(
        &format!("{path}&client_id=11111111-2222-3333-4444-555555555555"),
        &[("Metadata", "true")],
    );
    assert_eq!(
        (r.status, r.json()["error_description"].clone()),
        (400, "Identity not found".into())
    );
    f.imds
        .add_user_identity("11111111-2222-3333-4444-555555555555");
    let r = c.get(
        &format!("{path}&client_id=11111111-2222-3333-4444-555555555555"),
        &[("Metadata", "true")],
    );
    assert_eq!(r.status, 200);
    // Without a system-assigned identity IMDS uses the only user-assigned one when none is named, and refuses
    // to guess between several with its real error body.
    f.imds.set_system_identity(None);
    let r = c.get(path, &[("Metadata", "true")]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["client_id"],
        "11111111-2222-3333-4444-555555555555"
    );
    let rid = "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/two";
    f.imds.add_user_identity_ids(
        "22222222-2222-3333-4444-555555555555",
        "0b0b0b0b-2222-3333-4444-555555555555",
        rid,
    );
    let r = c.get(path, &[("Metadata", "true")]);
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            serde_json::json!({
                "error": "invalid_request",
                "error_description": "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"
            })
        )
    );
    // object_id and msi_res_id (any case) name the identity as client_id does.
    let r = c.get(
        &format!("{path}&object_id=0B0B0B0B-2222-3333-4444-555555555555"),
        &[("Metadata", "true")],
    );
    assert_eq!(
        (r.status, r.json()["client_id"].clone()),
        (200, "22222222-2222-3333-4444-555555555555".into())
    );
    let encoded: String =
        url::form_urlencoded::byte_serialize(rid.to_lowercase().as_bytes()).collect();
    let r = c.get(
        &format!("{path}&msi_res_id={encoded}"),
        &[("Metadata", "true")],
    );
    assert_eq!(
        (r.status, r.json()["client_id"].clone()),
        (200, "22222222-2222-3333-4444-555555555555".into())
    );
    let r = c.get(
        &format!("{path}&object_id=99999999-2222-3333-4444-555555555555"),
        &[("Metadata", "true")],
    );
    assert_eq!(
        (r.status, r.json()["error_description"].clone()),
        (400, "Identity not found".into())
    );
    f.imds
        .set_system_identity(Some("aaaaaaaa-2222-3333-4444-555555555555"));

    f.imds.set_token_lifetime(Duration::from_secs(600));
    f.imds
        .script([Reply::Status(410), Reply::Status(429), Reply::Status(500)]);
    assert_eq!(c.get(path, &[("Metadata", "true")]).status, 410);
    assert_eq!(c.get(path, &[("Metadata", "true")]).status, 429);
    assert_eq!(c.get(path, &[("Metadata", "true")]).status, 500);
    let r = c.get(path, &[("Metadata", "true")]);
    assert_eq!(r.json()["expires_in"], "600");
    assert_eq!(f.imds.stats().token_requests, 13);
    assert_eq!(f.imds.stats().tokens_issued, 6);
}

#[test]
fn arc_challenge_flow() {
    let tokens = TokenAuthority::new();
    let dir = tempfile::tempdir().unwrap();
    let arc =
        FakeImds::start_arc("127.0.0.1:0".parse().unwrap(), tokens.clone(), dir.path()).unwrap();
    let path =
        "/metadata/identity/oauth2/token?api-version=2020-06-01&resource=https://vault.azure.net";
    let mut c = Client::plain(arc.addr());
    let r = c.get(path, &[("Metadata", "true")]);
    assert_eq!(r.status, 401);
    let realm = r
        .header("www-authenticate")
        .unwrap()
        .strip_prefix("Basic realm=")
        .unwrap()
        .to_string();
    assert!(
        realm.starts_with(dir.path().to_str().unwrap()) && realm.ends_with(".key"),
        "{realm}"
    );
    let secret = std::fs::read_to_string(&realm).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&realm).unwrap().permissions().mode() & 0o777,
        0o600
    );

    assert_eq!(
        c.get(
            path,
            &[("Metadata", "true"), ("Authorization", "Basic wrong")]
        )
        .status,
        401
    );
    let r = c.get(
        path,
        &[
            ("Metadata", "true"),
            ("Authorization", &format!("Basic {secret}")),
        ],
    );
    assert_eq!(r.status, 200);
    let tok = r.json()["access_token"].as_str().unwrap().to_string();
    assert!(tokens.check(&tok, "https://vault.azure.net").is_ok());

    let r = c.get(&format!("{path}&client_id=x"), &[("Metadata", "true")]);
    assert_eq!(r.status, 400);
    let old =
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net";
    assert_eq!(c.get(old, &[("Metadata", "true")]).status, 400);
    assert_eq!(arc.stats().arc_challenges, 1);
}

#[test]
fn untrusted_clients_fail_the_handshake() {
    let f = start();
    let other = kvvm_sim::tls::TestCa::generate();
    let tcp = TcpStream::connect(f.vault.addr()).unwrap();
    let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
    let conn = rustls::ClientConnection::new(other.client_config(), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    assert!(
        s.write_all(b"GET / HTTP/1.1\r\n\r\n")
            .and_then(|_| s.flush())
            .is_err()
    );
    // The server thread records the failure asynchronously.
    for _ in 0..50 {
        if f.vault.stats().tls_handshake_failures == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(f.vault.stats().tls_handshake_failures, 1);
    assert_eq!(f.vault.stats().requests, 0);
}

/// The namespace harness: names resolve to 127.0.0.1, IMDS's address is local, the bundle holds the test CA,
/// and the waagent directories are empty tmpfs.
#[test]
fn netns_looks_like_a_vm() {
    run_isolated("netns_looks_like_a_vm", || {
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap();
        assert!(hosts.contains("127.0.0.1 myvault.vault.azure.net"));
        let bundle = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap();
        assert!(bundle.contains(test_ca().ca_pem().trim()));
        for d in ["/var/lib/waagent", "/var/log/azure", "/var/opt/azcmagent"] {
            assert_eq!(std::fs::read_dir(d).unwrap().count(), 0, "{d} is empty");
        }
        let kvvm_sim::vm::Fakes { imds, vault } = kvvm_sim::vm::Fakes::start(VAULT_NAMES);
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(HOST, 443))
            .unwrap()
            .next()
            .unwrap();
        assert_eq!(addr, vault.addr());
        let mut c = Client::tls(addr, HOST);
        assert_eq!(c.get("/secrets/x?api-version=7.4", &[]).status, 401);
        let mut c = Client::plain(imds.addr());
        let r = c.get(
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net",
            &[("Metadata", "true")],
        );
        assert_eq!(r.status, 200);
    });
}

/// A wrong test name must fail loudly rather than pass by running nothing.
#[test]
#[should_panic(expected = "ran no test of that name")]
fn netns_wrong_name_fails() {
    if !nix_root() {
        panic!("ran no test of that name (skipped: not root)");
    }
    run_isolated("no_such_test", || {});
}

fn nix_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
