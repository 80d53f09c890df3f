//! Writing credentials to disk: private keys only ever with mode 0600 and never over an existing
//! key; files a broker reads (CRL, password file) replaced atomically, so that a reload never
//! reads half a file.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Mode of private keys and password files.
pub const PRIVATE_MODE: u32 = 0o600;
/// Mode of certificates and CRLs.
pub const PUBLIC_MODE: u32 = 0o644;

/// Writes a new private key file with mode 0600; refuses to replace an existing file, because a
/// lost CA or device key cannot be recovered.
pub fn write_new_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_MODE)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow::anyhow!(
                    "{} exists; refusing to overwrite a private key (move it away first)",
                    path.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("creating {}", path.display()))
            }
        })?;
    // The mode given to open() passes through the umask; set it exactly.
    file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_MODE))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Replaces `path` atomically (a temporary file in the same directory, then a rename) with a
/// file of `mode`.
pub fn replace_atomically(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = temporary_sibling(path);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        // Exactly `mode`, whatever the umask (a broker running as another user reads the CRL).
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Creates `dir` (and parents) if missing.
pub fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))
}

/// Reads a PEM or other text file, naming it in the error.
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("iot-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn private_files_are_0600_and_never_overwritten() {
        let dir = scratch("private");
        let key = dir.join("k.key");
        write_new_private(&key, "secret").unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = write_new_private(&key, "other").unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "secret");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn atomic_replacement_sets_the_mode_and_leaves_no_temporary_file() {
        let dir = scratch("atomic");
        let file = dir.join("crl.pem");
        std::fs::write(&file, "old").unwrap();
        replace_atomically(&file, b"new", PUBLIC_MODE).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "new");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, PUBLIC_MODE);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
