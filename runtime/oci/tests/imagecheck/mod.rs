//! Helpers shared by the image tests: mounting a root image and checking the busybox fixture in it.

#![allow(dead_code, reason = "each test binary uses a part")]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use bulkhead_oci::testing::MTIME;
use bulkhead_oci::{ImageRecord, ImageStore};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The static busybox the fixtures are built around (busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

pub fn check_static_busybox() -> TestResult {
    let out = Command::new("file").arg("-L").arg(BUSYBOX).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("statically linked") {
        return Err(format!("{BUSYBOX} must be a static busybox (apt-get install busybox-static): {text}").into());
    }
    Ok(())
}

/// A read-only loop mount of an erofs image, unmounted on drop.
pub struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    pub fn new(image: &Path) -> Result<Mount, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let st = Command::new("mount").args(["-o", "loop,ro", "-t", "erofs"]).arg(image).arg(dir.path()).status()?;
        if !st.success() {
            return Err(format!("mount -o loop,ro -t erofs {} failed: {st}", image.display()).into());
        }
        Ok(Mount { dir })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Checks the content of the root image of `rec`, and runs busybox from it.
pub fn check_root_image(store: &ImageStore, rec: &ImageRecord) -> TestResult {
    let image = store.erofs_path(rec);
    assert!(image.is_file(), "{}", image.display());
    let m = Mount::new(&image)?;
    let bb = std::fs::metadata(m.path("bin/busybox"))?;
    assert_eq!(bb.len(), std::fs::metadata(BUSYBOX)?.len());
    assert_eq!(bb.permissions().mode() & 0o7777, 0o755);
    assert_eq!(bb.mtime(), MTIME as i64, "mtimes are kept");
    assert_eq!(std::fs::read_link(m.path("bin/sh"))?, PathBuf::from("busybox"));
    assert_eq!(std::fs::metadata(m.path("bin/busybox-link"))?.ino(), bb.ino(), "hard links stay links");
    assert_eq!(std::fs::metadata(m.path("tmp"))?.permissions().mode() & 0o7777, 0o1777);
    assert_eq!(std::fs::read_to_string(m.path("etc/hostname"))?, "busybox\n");
    assert!(!m.path("etc/remove-me").exists(), "the whiteout removed it");
    assert!(!m.path("etc/.wh.remove-me").exists(), "whiteouts are not in the image");
    let added = std::fs::metadata(m.path("etc/added"))?;
    assert_eq!((added.uid(), added.gid(), added.permissions().mode() & 0o777), (1000, 1000, 0o640));
    let mut doomed: Vec<String> = std::fs::read_dir(m.path("usr/share/doomed"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    doomed.sort();
    assert_eq!(doomed, ["new"], "the opaque directory hides the lower layer's files");
    let out = Command::new("chroot").arg(m.path("")).args(["/bin/busybox", "echo", "ok"]).output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("chroot").arg(m.path("")).args(["/bin/sh", "-c", "/bin/busybox cat /etc/added"]).output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "added\n", "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}
