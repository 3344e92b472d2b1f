//! Files only their owner may read: the admin key, a worker's token.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `contents` to `path` with mode 0600, creating its folder (0700)
/// when missing. A file that already exists is tightened to 0600 too: open
/// keeps an existing file's mode.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new file and an existing, world-readable one both end up 0600.
    #[test]
    fn private_files_are_owner_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested/secret");
        write_private(&path, "one").expect("new file");
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .ok()
        };
        assert_eq!(mode(&path), Some(0o600));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private(&path, "two").expect("existing file");
        assert_eq!(mode(&path), Some(0o600));
        assert_eq!(std::fs::read_to_string(&path).ok().as_deref(), Some("two"));
    }
}
