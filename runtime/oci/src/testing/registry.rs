//! A real registry for tests (feature `test-support`): Debian's `docker-registry` on a free 127.0.0.1
//! port with its own storage, and images pushed to it with oci-client's push API (the busybox fixture with
//! gzip and zstd layers, a multi-arch OCI index, a Docker manifest list with Docker media types). It can
//! want basic auth (htpasswd) or bearer tokens from a [`TokenServer`].

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as BASE64_URL};
use oci_client::client::{ClientConfig, ClientProtocol};
// Re-exported so that tests of other crates can name the credentials they push with.
pub use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest as _, Sha256};

use super::write_busybox_layout;
use crate::layout::{Compression, host_arch};

/// Debian's docker-registry.
pub const REGISTRY: &str = "/usr/bin/docker-registry";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// True when the registry binary is here; false (with a note) when it is not and CI is unset; in CI a
/// missing registry fails the test.
pub fn registry_available() -> bool {
    if Path::new(REGISTRY).is_file() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{REGISTRY} is missing and CI is set: run ci/deps build (it installs docker-registry)");
    }
    eprintln!("skipping: {REGISTRY} is not installed (apt-get install docker-registry, or ci/deps build)");
    false
}

/// "sha256:<hex>" of `bytes`.
pub fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A docker-registry on a free 127.0.0.1 port with its own storage, killed on drop.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// "127.0.0.1:<port>".
    pub addr: String,
    dir: tempfile::TempDir,
    _token: Option<TokenServer>,
}

impl Registry {
    /// Starts a registry; with `user`, it wants basic auth from an htpasswd file.
    pub fn start(user: Option<(&str, &str)>) -> Result<Registry, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let auth = match user {
            Some((name, password)) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", name, password])
                    .output()
                    .map_err(|e| format!("running htpasswd: {e} (apt-get install apache2-utils, or ci/deps build)"))?;
                if !out.status.success() {
                    return Err(format!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr)).into());
                }
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout)?;
                format!("auth:\n  htpasswd:\n    realm: bulkhead-test\n    path: {}\n", file.display())
            }
            None => String::new(),
        };
        Registry::serve(dir, auth, None)
    }

    /// Starts a registry that wants bearer tokens from its own token service (see [`TokenServer`]), which
    /// grants them to `user` with `password` (basic auth) and refuses anyone else.
    pub fn start_with_token_auth(user: &str, password: &str) -> Result<Registry, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let token = TokenServer::start(dir.path(), user, password)?;
        let auth = format!(
            "auth:\n  token:\n    realm: http://{}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    \
             rootcertbundle: {}\n",
            token.addr,
            token.cert.display()
        );
        Registry::serve(dir, auth, Some(token))
    }

    fn serve(
        dir: tempfile::TempDir,
        auth: String,
        token: Option<TokenServer>,
    ) -> Result<Registry, Box<dyn std::error::Error>> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: {addr}\n{auth}",
                dir.path().join("storage").display()
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut reg = Registry { child, addr, dir, _token: token };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&reg.addr).is_err() {
            if let Some(st) = reg.child.try_wait()? {
                return Err(format!("docker-registry exited ({st}): {}", reg.log()).into());
            }
            if Instant::now() > deadline {
                return Err(format!("docker-registry did not listen on {} within 20 s: {}", reg.addr, reg.log()).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(reg)
    }

    /// The registry's storage (filesystem driver): what was pushed, servable by another docker-registry.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// What the registry logged so far (its access log included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The registry's own file for blob `digest` ("sha256:...").
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = &digest["sha256:".len()..];
        self.dir.path().join("storage/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    /// How many times the registry served blob `digest` with a body.
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.log().lines().filter(|l| l.contains("\"GET ") && l.contains(&format!("/blobs/{digest} "))).count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The token service's name for the registry (the JWT audience).
const SERVICE: &str = "bulkhead-test-registry";
/// The token service's name for itself (the JWT issuer).
const ISSUER: &str = "bulkhead-test-token-service";

/// A minimal distribution token service (docker's "token authentication specification") on a free
/// 127.0.0.1 port, in a thread: `GET /token?service=...&scope=repository:NAME:ACTIONS` with the right
/// basic-auth credentials gets an RS256 JWT granting the requested actions, signed (with `openssl dgst`) by
/// a self-signed key whose certificate is the registry's `rootcertbundle` and travels in the `x5c` header.
#[derive(Debug)]
pub struct TokenServer {
    /// "127.0.0.1:<port>".
    pub addr: String,
    cert: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    fn start(dir: &Path, user: &str, password: &str) -> Result<TokenServer, Box<dyn std::error::Error>> {
        let key = dir.join("token.key");
        let cert = dir.join("token.crt");
        let st = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bulkhead-test-token"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("running openssl: {e} (apt-get install openssl)"))?;
        if !st.success() {
            return Err(format!("openssl req failed: {st}").into());
        }
        let der = Command::new("openssl").args(["x509", "-outform", "DER", "-in"]).arg(&cert).output()?;
        if !der.status.success() {
            return Err("openssl x509 -outform DER failed".into());
        }
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let issuer =
            TokenIssuer { key, x5c: BASE64.encode(&der.stdout), basic: BASE64.encode(format!("{user}:{password}")) };
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(mut conn) = conn {
                        let _ = issuer.answer(&mut conn);
                    }
                }
            })
        };
        Ok(TokenServer { addr, cert, stop, thread: Some(thread) })
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct TokenIssuer {
    key: PathBuf,
    x5c: String,
    basic: String,
}

impl TokenIssuer {
    fn answer(&self, conn: &mut std::net::TcpStream) -> Result<(), Box<dyn std::error::Error>> {
        use std::io::{BufRead as _, Write as _};
        let mut r = std::io::BufReader::new(conn.try_clone()?);
        let mut request_line = String::new();
        r.read_line(&mut request_line)?;
        let mut authorized = false;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':')
                && name.eq_ignore_ascii_case("authorization")
            {
                authorized = value.trim() == format!("Basic {}", self.basic);
            }
        }
        let target = request_line.split_whitespace().nth(1).unwrap_or_default();
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let scopes: Vec<String> =
            query.split('&').filter_map(|kv| kv.strip_prefix("scope=")).map(percent_decode).collect();
        let (status, body) = if authorized {
            ("200 OK", serde_json::json!({ "token": self.token(&scopes)? }).to_string())
        } else {
            ("401 Unauthorized", r#"{"details":"wrong or missing credentials"}"#.to_owned())
        };
        write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        Ok(())
    }

    /// A JWT granting what `scopes` ("repository:NAME:pull,push") ask for.
    fn token(&self, scopes: &[String]) -> Result<String, Box<dyn std::error::Error>> {
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| {
                let (kind, rest) = s.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(serde_json::json!({ "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }))
            })
            .collect();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let header = serde_json::json!({ "typ": "JWT", "alg": "RS256", "x5c": [self.x5c] });
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": "puller", "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{now}-{}", access.len()), "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            BASE64_URL.encode(serde_json::to_vec(&header)?),
            BASE64_URL.encode(serde_json::to_vec(&claims)?)
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            std::io::Write::write_all(&mut stdin, signing_input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err("openssl dgst -sign failed".into());
        }
        Ok(format!("{signing_input}.{}", BASE64_URL.encode(&out.stdout)))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok())) {
            (b'%', Some(h)) if u8::from_str_radix(h, 16).is_ok() => {
                out.push(u8::from_str_radix(h, 16).unwrap_or(b'?'));
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Pushes blobs and manifests with oci-client's push API.
pub struct Pusher {
    client: Client,
    addr: String,
    auth: RegistryAuth,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Pusher {
    /// A pusher to the plain-HTTP registry at `addr`, as `auth`.
    pub fn new(addr: &str, auth: RegistryAuth) -> Pusher {
        let client = Client::new(ClientConfig { protocol: ClientProtocol::Http, ..ClientConfig::default() });
        Pusher { client, addr: addr.to_owned(), auth }
    }

    async fn reference(&self, repo: &str, tag: &str) -> Result<Reference, Box<dyn std::error::Error>> {
        let r = Reference::with_tag(self.addr.clone(), repo.to_owned(), tag.to_owned());
        self.client.auth(&r, &self.auth, RegistryOperation::Push).await?;
        Ok(r)
    }

    /// Pushes a blob to `repo`; returns its digest.
    pub async fn blob(&self, repo: &str, bytes: Vec<u8>) -> Result<String, Box<dyn std::error::Error>> {
        let r = self.reference(repo, "unused").await?;
        let digest = sha(&bytes);
        self.client.push_blob(&r, bytes, &digest).await?;
        Ok(digest)
    }

    /// Pushes a manifest under `tag` (a tag, or its own digest) and returns its digest.
    pub async fn manifest(
        &self,
        repo: &str,
        tag: &str,
        bytes: Vec<u8>,
        media_type: &str,
    ) -> Result<String, Box<dyn std::error::Error>> {
        let digest = sha(&bytes);
        let r = self.reference(repo, "unused").await?;
        let r = if tag.starts_with("sha256:") {
            Reference::with_digest(r.registry().to_owned(), repo.to_owned(), digest.clone())
        } else {
            Reference::with_tag(r.registry().to_owned(), repo.to_owned(), tag.to_owned())
        };
        self.client.push_manifest_raw(&r, bytes, http::HeaderValue::from_str(media_type)?).await?;
        Ok(digest)
    }

    /// Pushes the image of an OCI layout written by `write_busybox_layout` (its manifest `digest`) under
    /// `tag`, with the manifest as it is (or rewritten by `rewrite`, e.g. to Docker media types).
    pub async fn layout(
        &self,
        repo: &str,
        tag: &str,
        layout: &Path,
        digest: &str,
        rewrite: impl Fn(&mut serde_json::Value),
    ) -> Result<(String, Vec<u8>), Box<dyn std::error::Error>> {
        let blob = |d: &str| std::fs::read(layout.join("blobs/sha256").join(&d["sha256:".len()..]));
        let mut manifest: serde_json::Value = serde_json::from_slice(&blob(digest)?)?;
        let config = manifest["config"]["digest"].as_str().unwrap_or_default().to_owned();
        self.blob(repo, blob(&config)?).await?;
        let layers: Vec<String> = manifest["layers"]
            .as_array()
            .map(|a| a.iter().filter_map(|l| l["digest"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        for l in &layers {
            self.blob(repo, blob(l)?).await?;
        }
        rewrite(&mut manifest);
        let media_type = manifest["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_owned();
        let bytes = serde_json::to_vec(&manifest)?;
        let digest = self.manifest(repo, tag, bytes.clone(), &media_type).await?;
        Ok((digest, bytes))
    }
}

/// What the registry holds after [`push_all`].
#[derive(Debug)]
pub struct Pushed {
    _layouts: tempfile::TempDir,
    /// test/busybox:gzip (OCI manifest, gzip layers).
    pub gzip: String,
    /// The layer blobs of `gzip`.
    pub gzip_layers: Vec<String>,
    /// test/busybox:zstd.
    pub zstd: String,
    /// test/multi:v1 is an OCI index; this is its manifest for this node.
    pub multi_native: String,
    /// test/docker:v1 is a Docker manifest list; this is its Docker manifest for this node.
    pub docker_native: String,
}

/// Builds and pushes every test image (see [`Pushed`]).
pub async fn push_all(addr: &str, auth: RegistryAuth, busybox: &Path) -> Result<Pushed, Box<dyn std::error::Error>> {
    let layouts = tempfile::tempdir()?;
    let p = Pusher::new(addr, auth);
    let gz = layouts.path().join("gzip");
    let f = write_busybox_layout(&gz, busybox, Compression::Gzip)?;
    let (gzip, gzip_manifest) = p.layout("test/busybox", "gzip", &gz, &f.manifest_digest, |_| {}).await?;
    assert_eq!(gzip, f.manifest_digest, "pushed unchanged");
    let gzip_layers = f.layer_blobs.iter().map(|b| std::fs::read(b).map(|b| sha(&b))).collect::<Result<_, _>>()?;

    let zs = layouts.path().join("zstd");
    let f = write_busybox_layout(&zs, busybox, Compression::Zstd)?;
    let (zstd, _) = p.layout("test/busybox", "zstd", &zs, &f.manifest_digest, |_| {}).await?;

    // A multi-arch index: another architecture first (same layers, its own config), then this node's.
    let (multi_native, _) = p.layout("test/multi", "native", &gz, &layout_manifest(&gz)?, |_| {}).await?;
    let mut foreign_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(gz.join("blobs/sha256").join(config_hex(&gzip_manifest)?))?)?;
    let other_arch = if host_arch() == "s390x" { "amd64" } else { "s390x" };
    foreign_config["architecture"] = other_arch.into();
    let foreign_config = serde_json::to_vec(&foreign_config)?;
    let foreign_config_digest = p.blob("test/multi", foreign_config.clone()).await?;
    let mut foreign: serde_json::Value = serde_json::from_slice(&gzip_manifest)?;
    foreign["config"]["digest"] = foreign_config_digest.into();
    foreign["config"]["size"] = foreign_config.len().into();
    let foreign = serde_json::to_vec(&foreign)?;
    let foreign_digest = p.manifest("test/multi", "sha256:", foreign.clone(), OCI_MANIFEST).await?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            { "mediaType": OCI_MANIFEST, "digest": foreign_digest, "size": foreign.len(),
              "platform": { "os": "linux", "architecture": other_arch } },
            { "mediaType": OCI_MANIFEST, "digest": multi_native, "size": gzip_manifest.len(),
              "platform": { "os": "linux", "architecture": host_arch() } },
        ]
    });
    p.manifest("test/multi", "v1", serde_json::to_vec(&index)?, OCI_INDEX).await?;

    // Docker media types: a schema 2 manifest in a manifest list.
    let (docker_native, docker_manifest) = p
        .layout("test/docker", "sha256:", &gz, &layout_manifest(&gz)?, |m| {
            m["mediaType"] = DOCKER_MANIFEST.into();
            m["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json".into();
            if let Some(layers) = m["layers"].as_array_mut() {
                for l in layers {
                    l["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip".into();
                }
            }
        })
        .await?;
    let list = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{ "mediaType": DOCKER_MANIFEST, "digest": docker_native, "size": docker_manifest.len(),
                        "platform": { "os": "linux", "architecture": host_arch() } }]
    });
    p.manifest("test/docker", "v1", serde_json::to_vec(&list)?, DOCKER_LIST).await?;
    Ok(Pushed { _layouts: layouts, gzip, gzip_layers, zstd, multi_native, docker_native })
}

/// Fills `dest` (which must not exist) with the storage of a docker-registry holding [`push_all`]'s images,
/// for a registry that serves it elsewhere (the test bed's dom0 has docker-registry but nothing to push
/// with): a registry on this host is started, pushed to, and its storage copied once the pushes returned.
pub fn busybox_storage(busybox: &Path, dest: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let reg = Registry::start(None)?;
    rt.block_on(push_all(&reg.addr, RegistryAuth::Anonymous, busybox))?;
    let st = Command::new("cp").arg("-a").arg(reg.storage()).arg(dest).status()?;
    if !st.success() {
        return Err(format!("copying the registry storage to {}: {st}", dest.display()).into());
    }
    Ok(())
}

/// The manifest digest of the layout in `dir` (its index.json's only manifest).
fn layout_manifest(dir: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    Ok(index["manifests"][0]["digest"].as_str().unwrap_or_default().to_owned())
}

fn config_hex(manifest: &[u8]) -> Result<String, Box<dyn std::error::Error>> {
    let m: serde_json::Value = serde_json::from_slice(manifest)?;
    Ok(m["config"]["digest"].as_str().unwrap_or_default().trim_start_matches("sha256:").to_owned())
}
