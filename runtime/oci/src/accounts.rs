//! The users and groups of an image: its `/etc/passwd` and `/etc/group`, read once when its tree is built
//! (the root image is erofs and read-only, so they never change), and user specs resolved against them the
//! way runc resolves a container's user (libcontainer `user.GetExecUser`), so that `USER nginx` and CRI's
//! `runAsUsername` mean in a zone what they mean under containerd.
//!
//! The files come from the image and are hostile: only regular files are read (a symlinked `etc` or file
//! counts as absent, so nothing outside the tree is read), each at most [`MAX_FILE_BYTES`], at most
//! [`MAX_ENTRIES`] entries each; malformed lines are skipped, as libc skips them. Only what resolution needs
//! is kept (names, ids, group members), which bounds the image record that stores it.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Largest `/etc/passwd` or `/etc/group` read; a larger one is ignored (real ones are a few KiB).
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Entries kept from each file; the rest are ignored.
pub const MAX_ENTRIES: usize = 16384;
/// Group member names kept over all groups.
pub const MAX_MEMBERS: usize = 65536;
/// Longest name kept (Linux's LOGIN_NAME_MAX).
const MAX_NAME_BYTES: usize = 256;

/// One line of `/etc/passwd`, as far as resolution needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// User names listed as members (the group is supplementary for them).
    #[serde(default)]
    pub members: Vec<String>,
}

/// An image's users and groups (empty when it has no readable `/etc/passwd` or `/etc/group`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounts {
    /// `/etc/passwd`, in file order (the first match wins, as in libc).
    pub users: Vec<PasswdEntry>,
    /// `/etc/group`, in file order.
    pub groups: Vec<GroupEntry>,
}

/// A resolved identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids, without repeats, in order: the user's groups (when no group was given),
    /// then the extra ones asked for.
    pub additional_gids: Vec<u32>,
}

/// Why a user spec does not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// A user name the image does not have.
    #[error("user {0:?} is not in the image's /etc/passwd: give a numeric uid or add the user to the image")]
    NoSuchUser(String),
    /// A group name the image does not have.
    #[error("group {0:?} is not in the image's /etc/group: give a numeric gid or add the group to the image")]
    NoSuchGroup(String),
    /// The spec is not `user`, `user:group` or empty.
    #[error("user {spec:?} is malformed ({reason}): give uid, name, uid:gid or name:group")]
    Malformed {
        /// The spec as given.
        spec: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// One side of a user spec: numeric ids are always ids, as in runc (a user named "1000" cannot be named).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part<'a> {
    Id(u32),
    Name(&'a str),
}

/// Parses one side of a spec; `spec` is the whole, for the error.
fn part<'a>(s: &'a str, spec: &str) -> Result<Part<'a>, AccountError> {
    let malformed = |reason| AccountError::Malformed { spec: spec.to_owned(), reason };
    if s.is_empty() {
        return Err(malformed("an empty user or group"));
    }
    if s.contains(':') {
        return Err(malformed("more than one ':'"));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        // u32::MAX is (uid_t)-1, which setuid takes as "leave unchanged".
        return match s.parse::<u32>() {
            Ok(id) if id != u32::MAX => Ok(Part::Id(id)),
            _ => Err(malformed("ids go up to 4294967294")),
        };
    }
    Ok(Part::Name(s))
}

impl Accounts {
    /// Reads `etc/passwd` and `etc/group` below `root`, an unpacked image tree. A missing, symlinked,
    /// non-regular or oversized file counts as empty (logged); only I/O errors on a file that is there fail.
    pub fn read(root: &Path) -> io::Result<Accounts> {
        let mut members = 0;
        Ok(Accounts {
            users: match read_file(root, "passwd")? {
                Some(bytes) => parse_passwd(&bytes),
                None => Vec::new(),
            },
            groups: match read_file(root, "group")? {
                Some(bytes) => parse_group(&bytes, &mut members),
                None => Vec::new(),
            },
        })
    }

    /// Resolves a user spec as an image's USER gives it: "" (root), `uid`, `name`, `uid:gid`, `name:group`,
    /// `uid:group` or `name:gid`, then adds `extra_gids` (see [`Accounts::resolve_parts`]).
    pub fn resolve(&self, user_spec: &str, extra_gids: &[u32]) -> Result<Ids, AccountError> {
        if user_spec.is_empty() {
            return self.resolve_parts(None, None, extra_gids);
        }
        let (user, group) = match user_spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user_spec, None),
        };
        self.resolve_user(Some(part(user, user_spec)?), group.map(|g| part(g, user_spec)).transpose()?, extra_gids)
    }

    /// Resolves a user and a group given apart (each a number or a name; `None` = root, and the user's
    /// primary group), with runc's rules:
    /// - a user is looked up by uid when numeric, else by name; the first entry wins and gives the primary
    ///   gid; a numeric uid without an entry gets gid 0; a name without an entry is [`AccountError::NoSuchUser`]
    ///   (except "root", which is uid 0 and gid 0 even then);
    /// - a group is looked up the same way and replaces the primary gid; a numeric gid needs no entry (nor
    ///   does "root", gid 0);
    /// - without a group, the groups of `/etc/group` that list the user's name are its supplementary groups;
    ///   with one, none are added (it was chosen explicitly);
    /// - `extra_gids` follow, and repeats are dropped.
    pub fn resolve_parts(
        &self,
        user: Option<&str>,
        group: Option<&str>,
        extra_gids: &[u32],
    ) -> Result<Ids, AccountError> {
        let user = user.map(|u| part(u, u)).transpose()?;
        let group = group.map(|g| part(g, g)).transpose()?;
        self.resolve_user(user, group, extra_gids)
    }

    fn resolve_user(
        &self,
        user: Option<Part<'_>>,
        group: Option<Part<'_>>,
        extra_gids: &[u32],
    ) -> Result<Ids, AccountError> {
        // No user is runc's default: uid 0, looked up like any other uid.
        let user = user.unwrap_or(Part::Id(0));
        let entry = self.users.iter().find(|e| match user {
            Part::Id(uid) => e.uid == uid,
            Part::Name(name) => e.name == name,
        });
        let (uid, mut gid, name) = match (entry, user) {
            (Some(e), _) => (e.uid, e.gid, Some(e.name.as_str())),
            (None, Part::Id(uid)) => (uid, 0, None),
            // Unlike runc: "root" is uid 0 even without an entry, as before names were resolved (images
            // recorded then have no accounts, and scratch images say USER root without an /etc/passwd).
            (None, Part::Name("root")) => (0, 0, None),
            (None, Part::Name(name)) => return Err(AccountError::NoSuchUser(name.to_owned())),
        };
        let mut additional_gids = Vec::new();
        match group {
            Some(Part::Id(g)) => gid = g,
            Some(Part::Name(g)) => {
                gid = self
                    .groups
                    .iter()
                    .find(|e| e.name == g)
                    .map(|e| e.gid)
                    .or((g == "root").then_some(0))
                    .ok_or_else(|| AccountError::NoSuchGroup(g.to_owned()))?;
            }
            None => {
                if let Some(name) = name {
                    additional_gids
                        .extend(self.groups.iter().filter(|e| e.members.iter().any(|m| m == name)).map(|e| e.gid));
                }
            }
        }
        additional_gids.extend_from_slice(extra_gids);
        let mut seen = std::collections::HashSet::new();
        additional_gids.retain(|g| seen.insert(*g));
        Ok(Ids { uid, gid, additional_gids })
    }
}

/// The bytes of `root/etc/<name>`, or `None` when it is absent or not something to read.
fn read_file(root: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let etc = root.join("etc");
    let path = etc.join(name);
    // symlink_metadata, so that neither a symlinked etc nor a symlinked file leads out of the tree.
    let plain = |p: &Path, want_dir: bool| match fs::symlink_metadata(p) {
        Ok(m) if (want_dir && m.is_dir()) || (!want_dir && m.is_file()) => Ok(true),
        Ok(m) => {
            tracing::warn!(path = %p.display(), kind = ?m.file_type(), "not a plain file or directory: the image's users and groups in it are not read");
            Ok(false)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    };
    if !plain(&etc, true)? || !plain(&path, false)? {
        return Ok(None);
    }
    // O_NOFOLLOW: the tree is the daemon's own staging directory, nothing swaps the file, but a link must
    // never be followed even so.
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        tracing::warn!(path = %path.display(), limit = MAX_FILE_BYTES, "the image's account file is too large: ignored");
        return Ok(None);
    }
    Ok(Some(bytes))
}

/// A name as it may be stored and matched: no separators, whitespace, control characters or characters
/// JSON escapes (which would grow the record), not a NIS `+`/`-` entry.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_BYTES
        && !s.starts_with(['+', '-'])
        && !s.chars().any(|c| c.is_control() || c.is_whitespace() || matches!(c, ':' | ',' | '"' | '\\'))
}

/// An id field: decimal digits only, below (uid_t)-1.
fn id_field(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>().ok().filter(|id| *id != u32::MAX)
}

/// The lines that may hold entries: not blank, not comments, valid UTF-8.
fn lines(bytes: &[u8]) -> impl Iterator<Item = &str> {
    bytes
        .split(|b| *b == b'\n')
        .filter_map(|l| std::str::from_utf8(l).ok())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// `name:password:uid:gid[:gecos:home:shell]` lines.
fn parse_passwd(bytes: &[u8]) -> Vec<PasswdEntry> {
    let mut users = Vec::new();
    for line in lines(bytes) {
        let mut f = line.split(':');
        let (Some(name), Some(_), Some(uid), Some(gid)) = (f.next(), f.next(), f.next(), f.next()) else {
            continue;
        };
        let (Some(uid), Some(gid)) = (id_field(uid), id_field(gid)) else { continue };
        if !valid_name(name) {
            continue;
        }
        if users.len() == MAX_ENTRIES {
            tracing::warn!(limit = MAX_ENTRIES, "the image's /etc/passwd has too many entries: the rest are ignored");
            break;
        }
        users.push(PasswdEntry { name: name.to_owned(), uid, gid });
    }
    users
}

/// `name:password:gid[:member,member...]` lines; `members` counts member names kept so far.
fn parse_group(bytes: &[u8], members: &mut usize) -> Vec<GroupEntry> {
    let mut groups = Vec::new();
    for line in lines(bytes) {
        let mut f = line.split(':');
        let (Some(name), Some(_), Some(gid)) = (f.next(), f.next(), f.next()) else { continue };
        let Some(gid) = id_field(gid) else { continue };
        if !valid_name(name) {
            continue;
        }
        if groups.len() == MAX_ENTRIES {
            tracing::warn!(limit = MAX_ENTRIES, "the image's /etc/group has too many entries: the rest are ignored");
            break;
        }
        let mut list = Vec::new();
        for m in f.next().unwrap_or_default().split(',').map(str::trim).filter(|m| valid_name(m)) {
            if *members == MAX_MEMBERS {
                tracing::warn!(
                    limit = MAX_MEMBERS,
                    "the image's /etc/group lists too many members: the rest are ignored"
                );
                break;
            }
            *members += 1;
            list.push(m.to_owned());
        }
        groups.push(GroupEntry { name: name.to_owned(), gid, members: list });
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment, then a blank line

daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
nginx:x:101:101:nginx user:/nonexistent:/bin/false
broken line without fields
bad-uid:x:12a:1::/:
+::::::
app:x:1000:1000::/home/app:/bin/sh
nginx:x:999:999:a second nginx: the first wins:/:/bin/false
";
    const GROUP: &str = "\
root:x:0:root
wheel:x:10:root,app
nginx:x:101:
www-data:x:33: nginx , app
nomembers:x:20
bad:x:-1:nginx
app:x:1000:
";

    fn accounts() -> Accounts {
        let mut members = 0;
        Accounts { users: parse_passwd(PASSWD.as_bytes()), groups: parse_group(GROUP.as_bytes(), &mut members) }
    }

    fn ids(uid: u32, gid: u32, additional_gids: &[u32]) -> Ids {
        Ids { uid, gid, additional_gids: additional_gids.to_vec() }
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let a = accounts();
        let names: Vec<&str> = a.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["root", "daemon", "nginx", "app", "nginx"]);
        let groups: Vec<(&str, u32)> = a.groups.iter().map(|g| (g.name.as_str(), g.gid)).collect();
        assert_eq!(
            groups,
            [("root", 0), ("wheel", 10), ("nginx", 101), ("www-data", 33), ("nomembers", 20), ("app", 1000)]
        );
        assert_eq!(a.groups[3].members, ["nginx", "app"], "members are trimmed");
        assert!(a.groups[4].members.is_empty());
        // Not UTF-8, an overflowing id, (uid_t)-1 and a quote in a name: skipped too.
        let odd = b"\xff\xfe:x:5:5\nbig:x:4294967296:0\nneg:x:4294967295:0\nq\"uote:x:7:7\nok:x:8:8";
        let users = parse_passwd(odd);
        assert_eq!(users, [PasswdEntry { name: "ok".into(), uid: 8, gid: 8 }]);
    }

    #[test]
    fn every_spec_form_resolves_as_runc_does() -> Result<(), AccountError> {
        let a = accounts();
        // "" is root, with root's groups.
        assert_eq!(a.resolve("", &[])?, ids(0, 0, &[0, 10]));
        // A name: its primary gid, and the groups that list it; the first entry wins.
        assert_eq!(a.resolve("nginx", &[])?, ids(101, 101, &[33]));
        assert_eq!(a.resolve("app", &[])?, ids(1000, 1000, &[10, 33]));
        // A uid with an entry is that entry (groups by its name); without one, gid 0 and no groups.
        assert_eq!(a.resolve("101", &[])?, ids(101, 101, &[33]));
        assert_eq!(a.resolve("4242", &[])?, ids(4242, 0, &[]));
        // An explicit group replaces the primary gid and adds no membership groups.
        assert_eq!(a.resolve("nginx:www-data", &[])?, ids(101, 33, &[]));
        assert_eq!(a.resolve("nginx:55", &[])?, ids(101, 55, &[]));
        assert_eq!(a.resolve("1000:wheel", &[])?, ids(1000, 10, &[]));
        assert_eq!(a.resolve("4242:4343", &[])?, ids(4242, 4343, &[]));
        // Extra gids follow, without repeats.
        assert_eq!(a.resolve("app", &[5, 33, 5])?, ids(1000, 1000, &[10, 33, 5]));
        assert_eq!(a.resolve("4242:4343", &[7])?, ids(4242, 4343, &[7]));
        // Given apart: no user is root, with the group asked for.
        assert_eq!(a.resolve_parts(None, Some("www-data"), &[])?, ids(0, 33, &[]));
        assert_eq!(a.resolve_parts(Some("nginx"), None, &[1])?, ids(101, 101, &[33, 1]));
        Ok(())
    }

    #[test]
    fn unknown_names_and_malformed_specs_are_refused() {
        let a = accounts();
        assert_eq!(a.resolve("www", &[]), Err(AccountError::NoSuchUser("www".into())));
        assert_eq!(a.resolve("nginx:staff", &[]), Err(AccountError::NoSuchGroup("staff".into())));
        assert_eq!(Accounts::default().resolve("nginx", &[]), Err(AccountError::NoSuchUser("nginx".into())));
        // Except root, which needs no entry.
        assert_eq!(Accounts::default().resolve("root:root", &[]), Ok(ids(0, 0, &[])));
        assert_eq!(Accounts::default().resolve("", &[]), Ok(ids(0, 0, &[])));
        let msg = a.resolve("www", &[]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("give a numeric uid or add the user to the image"), "{msg}");
        for bad in [":", "nginx:", ":101", "a:b:c", "4294967296", "4294967295", "1:99999999999", "nginx:4294967295"] {
            assert!(matches!(a.resolve(bad, &[]), Err(AccountError::Malformed { .. })), "{bad}");
        }
        assert!(matches!(a.resolve_parts(Some("a:b"), None, &[]), Err(AccountError::Malformed { .. })));
        assert!(matches!(a.resolve_parts(Some(""), None, &[]), Err(AccountError::Malformed { .. })));
        assert!(matches!(a.resolve_parts(None, Some(""), &[]), Err(AccountError::Malformed { .. })));
    }

    fn tree() -> io::Result<tempfile::TempDir> {
        let t = tempfile::tempdir()?;
        fs::create_dir(t.path().join("etc"))?;
        Ok(t)
    }

    #[test]
    fn reads_the_tree_and_missing_files_are_empty() -> Result<(), Box<dyn std::error::Error>> {
        let t = tree()?;
        assert_eq!(Accounts::read(t.path())?, Accounts::default());
        fs::write(t.path().join("etc/passwd"), PASSWD)?;
        fs::write(t.path().join("etc/group"), GROUP)?;
        assert_eq!(Accounts::read(t.path())?, accounts());
        let empty = tempfile::tempdir()?;
        assert_eq!(Accounts::read(empty.path())?, Accounts::default(), "no etc at all");
        Ok(())
    }

    #[test]
    fn symlinks_are_not_followed_out_of_the_tree() -> Result<(), Box<dyn std::error::Error>> {
        let outside = tree()?;
        fs::write(outside.path().join("etc/passwd"), "host:x:0:0::/:/bin/sh\n")?;
        fs::write(outside.path().join("etc/group"), "host:x:0:host\n")?;
        // The files are links.
        let t = tree()?;
        std::os::unix::fs::symlink(outside.path().join("etc/passwd"), t.path().join("etc/passwd"))?;
        std::os::unix::fs::symlink("../../../../../etc/group", t.path().join("etc/group"))?;
        assert_eq!(Accounts::read(t.path())?, Accounts::default());
        // etc is a link.
        let t = tempfile::tempdir()?;
        std::os::unix::fs::symlink(outside.path().join("etc"), t.path().join("etc"))?;
        assert_eq!(Accounts::read(t.path())?, Accounts::default());
        // A directory or a fifo where the file should be.
        let t = tree()?;
        fs::create_dir(t.path().join("etc/passwd"))?;
        nix::unistd::mkfifo(&t.path().join("etc/group"), nix::sys::stat::Mode::from_bits_truncate(0o644))?;
        assert_eq!(Accounts::read(t.path())?, Accounts::default());
        Ok(())
    }

    #[test]
    fn oversized_files_are_ignored_and_entries_bounded() -> Result<(), Box<dyn std::error::Error>> {
        let t = tree()?;
        let mut big = PASSWD.as_bytes().to_vec();
        big.resize(MAX_FILE_BYTES as usize + 1, b'\n');
        fs::write(t.path().join("etc/passwd"), &big)?;
        fs::write(t.path().join("etc/group"), GROUP)?;
        let a = Accounts::read(t.path())?;
        assert!(a.users.is_empty(), "a passwd over {MAX_FILE_BYTES} bytes is ignored");
        assert_eq!(a.groups, accounts().groups);
        // Exactly at the limit is read.
        big.truncate(MAX_FILE_BYTES as usize);
        fs::write(t.path().join("etc/passwd"), &big)?;
        assert_eq!(Accounts::read(t.path())?.users, accounts().users);

        let many: String = (0..MAX_ENTRIES + 10).map(|i| format!("u{i}:x:{i}:{i}\n")).collect();
        assert_eq!(parse_passwd(many.as_bytes()).len(), MAX_ENTRIES);
        let mut members = 0;
        let crowded: String = (0..100).map(|i| format!("g{i}:x:{i}:{}\n", vec!["m"; 1000].join(","))).collect();
        let groups = parse_group(crowded.as_bytes(), &mut members);
        assert_eq!(groups.len(), 100);
        assert_eq!(groups.iter().map(|g| g.members.len()).sum::<usize>(), MAX_MEMBERS);
        Ok(())
    }

    #[test]
    fn the_largest_accounts_fit_in_an_image_record() -> Result<(), serde_json::Error> {
        // The worst case for the stored size: as many entries as allowed, names filling the rest of each
        // file, and as many members as allowed.
        let limit = MAX_FILE_BYTES as usize;
        let per_line = limit / MAX_ENTRIES;
        let passwd: String =
            (0..MAX_ENTRIES).map(|i| format!("{:a<w$}::0:0\n", format!("{i}u"), w = per_line - 6)).collect();
        let group: String = (0..MAX_ENTRIES)
            .map(|i| {
                let m = if i < 16 { vec!["m"; MAX_MEMBERS / 16].join(",") } else { String::new() };
                format!("{:a<w$}::0:{m}\n", format!("{i}g"), w = 48)
            })
            .collect();
        assert!(passwd.len() <= limit && group.len() <= limit, "{} {}", passwd.len(), group.len());
        let mut members = 0;
        let a =
            Accounts { users: parse_passwd(passwd.as_bytes()), groups: parse_group(group.as_bytes(), &mut members) };
        assert_eq!((a.users.len(), a.groups.len(), members), (MAX_ENTRIES, MAX_ENTRIES, MAX_MEMBERS));
        let stored = serde_json::to_vec(&a)?.len() as u64;
        // Room is left for the rest of the record.
        assert!(stored < bulkhead_store::MAX_RECORD_BYTES - (512 << 10), "{stored} bytes");
        Ok(())
    }
}
