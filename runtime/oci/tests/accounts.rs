//! An image's users and groups, recorded when its tree is built: imported through the real path (unpack,
//! mkfs.erofs, record), then resolved as the daemon resolves `USER nginx`. Needs mkfs.erofs (`ci/deps
//! build`); not root (owners are not checked here).

use std::path::Path;

use bulkhead_oci::accounts::{AccountError, Ids};
use bulkhead_oci::testing::{EtcFile, write_accounts_layout};
use bulkhead_oci::{ImageStore, ImageStoreConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      nginx:x:101:101:nginx:/nonexistent:/bin/false\n\
                      app:x:1000:1000::/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\nnginx:x:101:\nwww-data:x:33:nginx,app\nlogs:x:4:nginx\n";

async fn import(
    dir: &Path,
    passwd: EtcFile<'_>,
) -> Result<(ImageStore, bulkhead_oci::ImageRecord), Box<dyn std::error::Error>> {
    let layout = dir.join("layout");
    write_accounts_layout(&layout, passwd, GROUP, "nginx")?;
    let store = ImageStore::open(ImageStoreConfig::new(dir.join("images"))).await?;
    let rec = store.import(&layout, Some("nginx:test")).await?;
    Ok((store, rec))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_imported_image_resolves_its_user_names() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (_, rec) = import(tmp.path(), EtcFile::Content(PASSWD)).await?;
    assert_eq!(rec.config.user, "nginx");
    let names: Vec<&str> = rec.accounts.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["root", "nginx", "app"]);
    // /etc/group as the upper layer left it, not the lower layer's.
    assert_eq!(rec.accounts.groups.len(), 4);

    let nginx = rec.accounts.resolve(&rec.config.user, &[])?;
    assert_eq!(nginx, Ids { uid: 101, gid: 101, additional_gids: vec![33, 4] });
    assert_eq!(rec.accounts.resolve("nginx:www-data", &[7])?, Ids { uid: 101, gid: 33, additional_gids: vec![7] });
    assert_eq!(rec.accounts.resolve("www", &[]), Err(AccountError::NoSuchUser("www".into())));

    // The record keeps them: a reopened store resolves the same.
    let reopened = ImageStore::open(ImageStoreConfig::new(tmp.path().join("images"))).await?;
    assert_eq!(reopened.get("nginx:test")?.accounts, rec.accounts);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_passwd_symlinked_out_of_the_image_is_not_read() -> TestResult {
    let tmp = tempfile::tempdir()?;
    // Followed, this would be the node's own /etc/passwd.
    let (_, rec) = import(tmp.path(), EtcFile::Symlink("/etc/passwd")).await?;
    assert!(rec.accounts.users.is_empty(), "{:?}", rec.accounts.users);
    assert_eq!(rec.accounts.groups.len(), 4, "the group file is a plain file and is read");
    assert_eq!(rec.accounts.resolve("nginx", &[]), Err(AccountError::NoSuchUser("nginx".into())));
    assert_eq!(rec.accounts.resolve("root", &[])?.uid, 0);
    Ok(())
}
