//! The node's network config: which file containerd would pick, its plugin chain and their binaries.

use std::fs;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::{Error, SUPPORTED_VERSIONS};

/// Where CNI configs live by default (containerd's and CRI-O's default).
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// Where plugins are looked for by default: the upstream location, then Debian's
/// (containernetworking-plugins installs into /usr/lib/cni).
pub const DEFAULT_BIN_DIRS: &[&str] = &["/opt/cni/bin", "/usr/lib/cni"];

/// Configs larger than this are refused (real ones are a few hundred bytes).
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Extensions libcni (and so containerd) considers in a conf dir.
const EXTENSIONS: &[&str] = &["conf", "conflist", "json"];

/// Where to find the network config and the plugins, and how long a plugin may run.
#[derive(Debug, Clone)]
pub struct CniConfig {
    /// The dir whose lowest-sorted config is the pod network.
    pub conf_dir: PathBuf,
    /// Dirs searched for plugin binaries, in order; also the plugins' `CNI_PATH`.
    pub bin_dirs: Vec<PathBuf>,
    /// How long one plugin invocation may take before it is killed.
    pub plugin_timeout: Duration,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: DEFAULT_CONF_DIR.into(),
            bin_dirs: DEFAULT_BIN_DIRS.iter().map(PathBuf::from).collect(),
            plugin_timeout: Duration::from_secs(60),
        }
    }
}

/// One plugin of the chain: its config object as written and the binary that runs it.
#[derive(Debug, Clone)]
pub struct Plugin {
    /// The plugin's `type`, which is also its binary's name.
    pub kind: String,
    /// The binary found in the bin dirs.
    pub binary: PathBuf,
    /// The plugin's config object (`name`, `cniVersion` and `prevResult` are set when it runs).
    pub conf: Map<String, Value>,
}

/// A loaded network config list: the pod network.
#[derive(Debug, Clone)]
pub struct Network {
    /// The file it came from.
    pub source: PathBuf,
    /// The network's `name`.
    pub name: String,
    /// The network's `cniVersion`.
    pub cni_version: String,
    /// `disableCheck`: CHECK is skipped.
    pub disable_check: bool,
    /// The plugin chain, in ADD order.
    pub plugins: Vec<Plugin>,
    pub(crate) bin_dirs: Vec<PathBuf>,
    pub(crate) timeout: Duration,
}

impl Network {
    /// Loads the lowest-sorted config of `cfg.conf_dir` and finds each plugin's binary. Like containerd, the
    /// first file decides: a broken first file is an error, not a reason to take the next.
    pub fn load(cfg: &CniConfig) -> Result<Network, Error> {
        let path = first_config(&cfg.conf_dir)?;
        let bytes = read_bounded(&path)?;
        Network::parse(&path, &bytes, cfg)
    }

    /// Parses a config (a `.conflist`, or a single plugin `.conf` treated as a list of one) and resolves
    /// its plugins' binaries.
    pub fn parse(path: &Path, bytes: &[u8], cfg: &CniConfig) -> Result<Network, Error> {
        let invalid = |reason: String| Error::InvalidConfig { path: path.to_owned(), reason };
        let value: Value = serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let Value::Object(mut top) = value else {
            return Err(invalid("not a JSON object".into()));
        };
        let is_list = path.extension().is_some_and(|e| e == "conflist");
        let name = string_field(&top, "name").map_err(invalid)?;
        if name.is_empty() {
            return Err(invalid("\"name\" is empty".into()));
        }
        let cni_version = string_field(&top, "cniVersion").map_err(invalid)?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(invalid(format!(
                "cniVersion {cni_version:?} is not supported (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            )));
        }
        let (disable_check, confs) = if is_list {
            let disable_check = match top.get("disableCheck") {
                None => false,
                Some(Value::Bool(b)) => *b,
                // libcni also accepts the string forms.
                Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
                Some(_) => return Err(invalid("\"disableCheck\" is not a boolean".into())),
            };
            let Some(Value::Array(list)) = top.remove("plugins") else {
                return Err(invalid("\"plugins\" is missing or not a list".into()));
            };
            (disable_check, list)
        } else {
            (false, vec![Value::Object(top)])
        };
        if confs.is_empty() {
            return Err(invalid("\"plugins\" is empty".into()));
        }
        let mut plugins = Vec::with_capacity(confs.len());
        for (i, conf) in confs.into_iter().enumerate() {
            let Value::Object(conf) = conf else {
                return Err(invalid(format!("plugins[{i}] is not an object")));
            };
            let kind = string_field(&conf, "type").map_err(|e| invalid(format!("plugins[{i}]: {e}")))?;
            check_plugin_name(&kind).map_err(|e| invalid(format!("plugins[{i}]: {e}")))?;
            let binary = find_plugin(&kind, &cfg.bin_dirs).ok_or_else(|| Error::PluginNotFound {
                plugin: kind.clone(),
                network: name.clone(),
                dirs: cfg.bin_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
            })?;
            plugins.push(Plugin { kind, binary, conf });
        }
        Ok(Network {
            source: path.to_owned(),
            name,
            cni_version,
            disable_check,
            plugins,
            bin_dirs: cfg.bin_dirs.clone(),
            timeout: cfg.plugin_timeout,
        })
    }
}

/// The lowest-sorted config file of `dir` (byte order of the names, as Go's sort.Strings).
fn first_config(dir: &Path) -> Result<PathBuf, Error> {
    let read_err = |source| Error::Read { path: dir.to_owned(), source };
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NoConfig { dir: dir.to_owned() }),
        Err(e) => return Err(read_err(e)),
    };
    let mut best: Option<PathBuf> = None;
    for entry in entries {
        let entry = entry.map_err(read_err)?;
        let path = entry.path();
        let wanted = path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e));
        // Files only (symlinks to files included, as kubernetes' configmaps deliver them).
        if !wanted || !path.is_file() {
            continue;
        }
        if best.as_ref().is_none_or(|b| path.file_name() < b.file_name()) {
            best = Some(path);
        }
    }
    best.ok_or_else(|| Error::NoConfig { dir: dir.to_owned() })
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, Error> {
    let read_err = |source| Error::Read { path: path.to_owned(), source };
    let file = fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::ConfigTooLarge { path: path.to_owned(), limit: MAX_CONFIG_BYTES });
    }
    Ok(bytes)
}

fn string_field(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{key:?} is not a string")),
        None => Err(format!("{key:?} is missing")),
    }
}

/// A plugin's `type` becomes a file name in a bin dir: nothing that could leave it.
fn check_plugin_name(kind: &str) -> Result<(), String> {
    let ok = !kind.is_empty()
        && kind != "."
        && kind != ".."
        && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok { Ok(()) } else { Err(format!("plugin type {kind:?} is not a plain file name")) }
}

/// The first executable file named `kind` in `dirs`.
fn find_plugin(kind: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter()
        .map(|d| d.join(kind))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn cfg(bin: &Path, conf: &Path) -> CniConfig {
        CniConfig { conf_dir: conf.to_owned(), bin_dirs: vec![bin.to_owned()], plugin_timeout: Duration::from_secs(5) }
    }

    fn fake_plugin(bin: &Path, name: &str) -> std::io::Result<()> {
        let p = bin.join(name);
        fs::write(&p, "#!/bin/sh\nexit 0\n")?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
    }

    fn load_err(c: &CniConfig) -> Result<Error, Box<dyn std::error::Error>> {
        match Network::load(c) {
            Ok(n) => Err(format!("loading must fail, got {n:?}").into()),
            Err(e) => Ok(e),
        }
    }

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"pods","plugins":[
        {"type":"bridge","bridge":"cni0","ipam":{"type":"host-local"}},{"type":"loopback"}]}"#;

    #[test]
    fn picks_the_lowest_sorted_config_and_its_plugins() -> TestResult {
        let (bin, conf) = (tempfile::tempdir()?, tempfile::tempdir()?);
        fake_plugin(bin.path(), "bridge")?;
        fake_plugin(bin.path(), "loopback")?;
        fs::write(conf.path().join("20-other.conflist"), "not even json")?;
        fs::write(conf.path().join("10-pods.conflist"), LIST)?;
        fs::write(conf.path().join("00-ignored.txt"), "x")?;
        let net = Network::load(&cfg(bin.path(), conf.path()))?;
        assert_eq!(net.source, conf.path().join("10-pods.conflist"));
        assert_eq!(net.name, "pods");
        assert_eq!(net.cni_version, "1.0.0");
        let kinds: Vec<_> = net.plugins.iter().map(|p| p.kind.as_str()).collect();
        assert_eq!(kinds, ["bridge", "loopback"]);
        assert_eq!(net.plugins[0].binary, bin.path().join("bridge"));
        assert_eq!(net.plugins[0].conf["bridge"], "cni0");
        Ok(())
    }

    #[test]
    fn a_single_conf_is_a_list_of_one() -> TestResult {
        let (bin, conf) = (tempfile::tempdir()?, tempfile::tempdir()?);
        fake_plugin(bin.path(), "bridge")?;
        fs::write(conf.path().join("10-one.conf"), r#"{"cniVersion":"0.4.0","name":"one","type":"bridge"}"#)?;
        let net = Network::load(&cfg(bin.path(), conf.path()))?;
        assert_eq!(net.plugins.len(), 1);
        assert_eq!(net.plugins[0].conf["name"], "one");
        assert!(!net.disable_check);
        Ok(())
    }

    #[test]
    fn an_empty_or_missing_conf_dir_says_so() -> TestResult {
        let (bin, conf) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let e = load_err(&cfg(bin.path(), conf.path()))?;
        assert!(matches!(e, Error::NoConfig { .. }), "{e}");
        assert!(e.to_string().contains(&conf.path().display().to_string()), "{e}");
        let e = load_err(&cfg(bin.path(), &conf.path().join("nope")))?;
        assert!(matches!(e, Error::NoConfig { .. }), "{e}");
        Ok(())
    }

    #[test]
    fn a_missing_plugin_is_named() -> TestResult {
        let (bin, conf) = (tempfile::tempdir()?, tempfile::tempdir()?);
        fake_plugin(bin.path(), "bridge")?;
        fs::write(conf.path().join("10-pods.conflist"), LIST)?;
        let e = load_err(&cfg(bin.path(), conf.path()))?;
        let Error::PluginNotFound { plugin, network, .. } = &e else { panic!("{e}") };
        assert_eq!((plugin.as_str(), network.as_str()), ("loopback", "pods"));
        assert!(e.to_string().contains(&bin.path().display().to_string()), "{e}");
        Ok(())
    }

    #[test]
    fn a_plugin_that_is_not_executable_is_not_found() -> TestResult {
        let (bin, conf) = (tempfile::tempdir()?, tempfile::tempdir()?);
        fs::write(bin.path().join("bridge"), "")?;
        fs::write(conf.path().join("1.conf"), r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#)?;
        let e = load_err(&cfg(bin.path(), conf.path()))?;
        assert!(matches!(e, Error::PluginNotFound { .. }), "{e}");
        Ok(())
    }

    #[test]
    fn invalid_configs_name_the_file_and_the_field() -> TestResult {
        let bin = tempfile::tempdir()?;
        fake_plugin(bin.path(), "bridge")?;
        let c = cfg(bin.path(), bin.path());
        let cases: &[(&str, &str, &str)] = &[
            ("a.conflist", "{", "not JSON"),
            ("a.conflist", "[]", "not a JSON object"),
            ("a.conflist", r#"{"cniVersion":"1.0.0","plugins":[]}"#, "\"name\" is missing"),
            ("a.conflist", r#"{"cniVersion":"0.2.0","name":"n","plugins":[]}"#, "not supported"),
            ("a.conflist", r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#, "\"plugins\" is empty"),
            ("a.conflist", r#"{"cniVersion":"1.0.0","name":"n"}"#, "\"plugins\" is missing"),
            ("a.conflist", r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../bridge"}]}"#, "plain file name"),
            ("a.conflist", r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"x":1}]}"#, "\"type\" is missing"),
            ("a.conf", r#"{"cniVersion":"1.0.0","name":"n","type":7}"#, "\"type\" is not a string"),
        ];
        for (file, text, want) in cases {
            let path = Path::new("/etc/cni/net.d").join(file);
            let e = Network::parse(&path, text.as_bytes(), &c).err().ok_or("must fail")?;
            let s = e.to_string();
            assert!(s.contains(want) && s.contains("/etc/cni/net.d/a.conf"), "{text}: {s}");
        }
        Ok(())
    }

    #[test]
    fn an_oversized_config_is_refused() -> TestResult {
        let (bin, conf) = (tempfile::tempdir()?, tempfile::tempdir()?);
        fs::write(conf.path().join("a.conf"), vec![b' '; MAX_CONFIG_BYTES as usize + 1])?;
        let e = load_err(&cfg(bin.path(), conf.path()))?;
        assert!(matches!(e, Error::ConfigTooLarge { .. }), "{e}");
        Ok(())
    }
}
