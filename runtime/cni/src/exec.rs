//! Running the plugin chain: one process per plugin and command, per the CNI spec's "Protocol" section.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

use crate::{CniResult, Error, Network, Plugin};

/// Most a plugin may print on stdout (results are a few KiB).
const MAX_STDOUT: usize = 1 << 20;
/// How much of a plugin's stderr is kept for an error message (the rest is read and dropped).
const MAX_STDERR_KEPT: usize = 4 << 10;

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container to the network.
    Add,
    /// Detach it (idempotent).
    Del,
    /// Verify that it is still attached as ADD left it.
    Check,
}

impl Command {
    /// The `CNI_COMMAND` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        }
    }
}

/// What the runtime tells the plugins about the container (the spec's runtime parameters).
#[derive(Debug, Clone)]
pub struct RuntimeConf {
    /// `CNI_CONTAINERID`: alphanumerics, then also `_`, `.` and `-`.
    pub container_id: String,
    /// `CNI_NETNS`: the container's network namespace (e.g. `/run/netns/<id>`).
    pub netns: PathBuf,
    /// `CNI_IFNAME`: the interface to make in it (e.g. `eth0`).
    pub ifname: String,
    /// `CNI_ARGS` as key-value pairs (e.g. `K8S_POD_NAMESPACE`, as containerd passes them).
    pub args: Vec<(String, String)>,
}

impl RuntimeConf {
    fn validate(&self) -> Result<(), Error> {
        let invalid = |what, value: &str, reason| Error::InvalidArgument { what, value: value.to_owned(), reason };
        crate::netns::check_name(&self.container_id)
            .map_err(|reason| invalid("container id", &self.container_id, reason))?;
        let i = &self.ifname;
        if i.is_empty() || i.len() > 15 || i == "." || i == ".." {
            return Err(invalid("interface name", i, "must be 1 to 15 bytes and not . or .."));
        }
        if i.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
            return Err(invalid("interface name", i, "must not contain /, : or whitespace"));
        }
        for (k, v) in &self.args {
            if k.is_empty() || [k, v].iter().any(|s| s.contains([';', '=', '\0'])) {
                return Err(invalid("CNI_ARGS entry", k, "keys and values must not contain ; = or NUL"));
            }
        }
        Ok(())
    }
}

/// CNI's error format (the spec's "Error" section).
#[derive(Deserialize)]
struct PluginError {
    #[serde(default)]
    code: u32,
    msg: String,
    #[serde(default)]
    details: String,
}

impl Network {
    /// ADD: runs the chain in order, each plugin getting the previous one's result. On an error the
    /// network may be half set up: run [`Network::del`] to clean up (as kubelet's StopPodSandbox would).
    pub async fn add(&self, rt: &RuntimeConf) -> Result<CniResult, Error> {
        rt.validate()?;
        let mut prev: Option<CniResult> = None;
        for plugin in &self.plugins {
            let out = self.invoke(plugin, Command::Add, rt, prev.as_ref()).await?;
            let result =
                CniResult::parse(&out).map_err(|reason| Error::BadResult { plugin: plugin.kind.clone(), reason })?;
            prev = Some(result);
        }
        // `load` refuses an empty chain, so the last plugin's result is there.
        prev.ok_or_else(|| Error::BadResult { plugin: self.name.clone(), reason: "the chain is empty".into() })
    }

    /// DEL: runs the chain in reverse, with ADD's result as `prevResult` when it is known. Plugins treat a
    /// DEL of what is already gone as success; a netns that no longer exists is passed as empty, as the
    /// spec allows, so the plugins still release their addresses.
    pub async fn del(&self, rt: &RuntimeConf, prev: Option<&CniResult>) -> Result<(), Error> {
        rt.validate()?;
        for plugin in self.plugins.iter().rev() {
            self.invoke(plugin, Command::Del, rt, prev).await?;
        }
        Ok(())
    }

    /// CHECK: asks each plugin whether the container's network is as ADD left it. Skipped (Ok) when the
    /// config sets `disableCheck` or its version predates CHECK (0.4.0).
    pub async fn check(&self, rt: &RuntimeConf, prev: &CniResult) -> Result<(), Error> {
        rt.validate()?;
        if self.disable_check || self.cni_version.starts_with("0.3.") {
            return Ok(());
        }
        for plugin in &self.plugins {
            self.invoke(plugin, Command::Check, rt, Some(prev)).await?;
        }
        Ok(())
    }

    /// Runs one plugin: config on stdin, runtime parameters in the environment, bounded output, timeout.
    async fn invoke(
        &self,
        plugin: &Plugin,
        command: Command,
        rt: &RuntimeConf,
        prev: Option<&CniResult>,
    ) -> Result<Vec<u8>, Error> {
        let mut conf = plugin.conf.clone();
        conf.insert("name".into(), Value::String(self.name.clone()));
        conf.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        match prev {
            Some(p) => conf.insert("prevResult".into(), p.raw().clone()),
            None => conf.remove("prevResult"),
        };
        let stdin_bytes = Value::Object(conf).to_string().into_bytes();
        let netns = if command == Command::Del && !rt.netns.exists() { Path::new("") } else { &rt.netns };
        let cni_path = std::env::join_paths(&self.bin_dirs).map_err(|_| Error::InvalidArgument {
            what: "bin dirs",
            value: format!("{:?}", self.bin_dirs),
            reason: "a bin dir must not contain ':' (CNI_PATH separates them with it)",
        })?;
        let args = rt.args.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";");

        let mut cmd = tokio::process::Command::new(&plugin.binary);
        // The plugins inherit our environment (PATH for iptables and friends) but no stray CNI_ variable.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CNI_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", &rt.container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", &rt.ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawn_err = |source| Error::Spawn { plugin: plugin.kind.clone(), command: command.as_str(), source };
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(spawn_err(std::io::Error::other("the plugin's pipes are missing")));
        };
        let io = async {
            let write = async {
                // A plugin that exits without reading its config closes the pipe: its exit status tells why.
                match stdin.write_all(&stdin_bytes).await {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                    other => other?,
                }
                drop(stdin);
                Ok::<_, std::io::Error>(())
            };
            let (out, err, ()) = tokio::try_join!(read_bounded(stdout, MAX_STDOUT), read_kept(stderr), write)?;
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((out, err, status))
        };
        let outcome = tokio::time::timeout(self.timeout, io).await;
        let (out, err, status) = match outcome {
            Err(_) => {
                return Err(Error::Timeout {
                    plugin: plugin.kind.clone(),
                    command: command.as_str(),
                    after: self.timeout,
                });
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                return Err(Error::OutputTooLarge {
                    plugin: plugin.kind.clone(),
                    command: command.as_str(),
                    limit: MAX_STDOUT,
                });
            }
            Ok(Err(e)) => return Err(spawn_err(e)),
            Ok(Ok(done)) => done,
        };
        // Dropping `child` (kill_on_drop) ends a plugin that is still running after an error above.
        tracing::debug!(
            plugin = %plugin.kind, command = command.as_str(), container = %rt.container_id,
            elapsed_ms = started.elapsed().as_millis() as u64, %status, "CNI plugin ran"
        );
        if status.success() {
            return Ok(out);
        }
        if let Ok(e) = serde_json::from_slice::<PluginError>(&out) {
            return Err(Error::Plugin {
                plugin: plugin.kind.clone(),
                command: command.as_str(),
                code: e.code,
                msg: e.msg,
                details: e.details,
            });
        }
        let text = if err.is_empty() { &out } else { &err };
        let mut stderr = String::from_utf8_lossy(&text[..text.len().min(MAX_STDERR_KEPT)]).trim().to_owned();
        if stderr.is_empty() {
            stderr = "it wrote no error".into();
        }
        Err(Error::PluginFailed {
            plugin: plugin.kind.clone(),
            command: command.as_str(),
            status: status.to_string(),
            stderr,
        })
    }
}

/// Reads all of `r`, failing with `FileTooLarge` past `limit` bytes.
async fn read_bounded(r: impl AsyncRead + Unpin, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > limit {
        return Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, "plugin output too large"));
    }
    Ok(buf)
}

/// Reads `r` to its end, keeping the first [`MAX_STDERR_KEPT`] bytes (draining the rest so the plugin
/// never blocks on a full pipe).
async fn read_kept(mut r: impl AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Ok(kept);
        }
        let room = MAX_STDERR_KEPT.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::time::Duration;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use crate::CniConfig;

    /// A network whose one plugin is the shell script `body` (fake plugins test the protocol's edges; the
    /// real plugins are exercised in tests/real_plugins.rs).
    fn network(dir: &Path, body: &str, timeout: Duration) -> Result<Network, Box<dyn std::error::Error>> {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin)?;
        let p = bin.join("fake");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n"))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        let cfg = CniConfig { conf_dir: dir.into(), bin_dirs: vec![bin], plugin_timeout: timeout };
        let text = br#"{"cniVersion":"1.0.0","name":"t","plugins":[{"type":"fake","x":1}]}"#;
        Ok(Network::parse(&dir.join("t.conflist"), text, &cfg)?)
    }

    fn rt() -> RuntimeConf {
        RuntimeConf {
            container_id: "abc123".into(),
            netns: "/run/netns/abc123".into(),
            ifname: "eth0".into(),
            args: vec![("K8S_POD_NAME".into(), "web".into())],
        }
    }

    const OK: &str = r#"{"cniVersion":"1.0.0","ips":[{"address":"10.9.0.2/24"}]}"#;

    #[tokio::test]
    async fn passes_the_protocol_s_environment_and_config() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("log");
        let body = format!("{{ env | grep ^CNI_ | sort; cat; }} > {}\necho '{OK}'", log.display());
        let net = network(dir.path(), &body, Duration::from_secs(20))?;
        let r = net.add(&rt()).await?;
        assert_eq!(r.ips[0].address.to_string(), "10.9.0.2/24");
        let seen = std::fs::read_to_string(&log)?;
        for want in [
            "CNI_ARGS=K8S_POD_NAME=web\n",
            "CNI_COMMAND=ADD\n",
            "CNI_CONTAINERID=abc123\n",
            "CNI_IFNAME=eth0\n",
            "CNI_NETNS=/run/netns/abc123\n",
            &format!("CNI_PATH={}\n", dir.path().join("bin").display()),
        ] {
            assert!(seen.contains(want), "{want:?} not in {seen}");
        }
        let conf: Value = serde_json::from_str(seen.lines().last().ok_or("nothing logged")?)?;
        assert_eq!(conf["name"], "t");
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["x"], 1);
        assert!(conf.get("prevResult").is_none());

        // DEL hands ADD's result back, and a netns that is gone is passed as empty.
        net.del(&rt(), Some(&r)).await?;
        let seen = std::fs::read_to_string(&log)?;
        assert!(seen.contains("CNI_COMMAND=DEL\n") && seen.contains("CNI_NETNS=\n"), "{seen}");
        let conf: Value = serde_json::from_str(seen.lines().last().ok_or("nothing logged")?)?;
        assert_eq!(conf["prevResult"]["ips"][0]["address"], "10.9.0.2/24");
        Ok(())
    }

    #[tokio::test]
    async fn a_cni_error_becomes_the_plugin_s_message() -> TestResult {
        let dir = tempfile::tempdir()?;
        let body =
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"no more addresses","details":"range full"}'; exit 1"#;
        let e = network(dir.path(), body, Duration::from_secs(20))?.add(&rt()).await.err().ok_or("must fail")?;
        let Error::Plugin { plugin, code, msg, .. } = &e else { panic!("{e}") };
        assert_eq!((plugin.as_str(), *code, msg.as_str()), ("fake", 11, "no more addresses"));
        assert_eq!(e.to_string(), "CNI plugin fake (ADD) failed: no more addresses (range full)");
        Ok(())
    }

    #[tokio::test]
    async fn a_plain_failure_keeps_its_stderr() -> TestResult {
        let dir = tempfile::tempdir()?;
        let e = network(dir.path(), "echo boom >&2; exit 3", Duration::from_secs(20))?
            .add(&rt())
            .await
            .err()
            .ok_or("must fail")?;
        assert!(matches!(e, Error::PluginFailed { .. }), "{e}");
        assert!(e.to_string().contains("boom") && e.to_string().contains("exit status: 3"), "{e}");
        Ok(())
    }

    #[tokio::test]
    async fn a_hanging_plugin_times_out() -> TestResult {
        let dir = tempfile::tempdir()?;
        let started = Instant::now();
        let e = network(dir.path(), "exec sleep 30", Duration::from_millis(300))?
            .add(&rt())
            .await
            .err()
            .ok_or("must fail")?;
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        Ok(())
    }

    #[tokio::test]
    async fn endless_output_is_cut_off() -> TestResult {
        let dir = tempfile::tempdir()?;
        let e = network(dir.path(), "exec yes", Duration::from_secs(20))?.add(&rt()).await.err().ok_or("must fail")?;
        assert!(matches!(e, Error::OutputTooLarge { .. }), "{e}");
        Ok(())
    }

    #[tokio::test]
    async fn garbage_results_are_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let e =
            network(dir.path(), "echo hello", Duration::from_secs(20))?.add(&rt()).await.err().ok_or("must fail")?;
        assert!(matches!(e, Error::BadResult { .. }), "{e}");
        Ok(())
    }

    #[tokio::test]
    async fn bad_runtime_parameters_never_reach_a_plugin() -> TestResult {
        let dir = tempfile::tempdir()?;
        let net = network(dir.path(), "exit 99", Duration::from_secs(20))?;
        let bad = [
            RuntimeConf { container_id: "../x".into(), ..rt() },
            RuntimeConf { container_id: String::new(), ..rt() },
            RuntimeConf { ifname: "a-very-long-ifname".into(), ..rt() },
            RuntimeConf { ifname: "eth 0".into(), ..rt() },
            RuntimeConf { args: vec![("A".into(), "b;c".into())], ..rt() },
        ];
        for rt in bad {
            let e = net.add(&rt).await.err().ok_or("must fail")?;
            assert!(matches!(e, Error::InvalidArgument { .. }), "{rt:?}: {e}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn check_is_skipped_when_disabled() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut net = network(dir.path(), "exit 1", Duration::from_secs(20))?;
        let prev = CniResult::parse(OK.as_bytes())?;
        assert!(net.check(&rt(), &prev).await.is_err());
        net.disable_check = true;
        net.check(&rt(), &prev).await?;
        Ok(())
    }
}
