//! Foundation layer: the data directory. This type is the one owner of how the directory is
//! created (private to this user) and how files are put in it (readable only by this user, never
//! overwritten). The token key (`auth`), the secret keys (`secrets`) and the SQLite store each
//! keep a file there; they name the file, this type does the rest.

use std::path::{Path, PathBuf};

/// A data directory, which may not exist yet.
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
}

impl DataDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` inside the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Creates the directory, readable only by this user, if it does not exist. An existing
    /// directory keeps the permissions the operator gave it.
    pub fn create(&self) -> std::io::Result<()> {
        if !self.path.exists() {
            std::fs::create_dir_all(&self.path)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o700))?;
            }
        }
        Ok(())
    }

    /// Writes a new file `name` readable only by this user (creating the directory first) and
    /// syncs it. Fails with `AlreadyExists` if the file exists: key files are never overwritten,
    /// and a process that loses a race to create one uses the winner's.
    pub fn write_private(&self, name: &str, body: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.create()?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(self.file(name))?;
        file.write_all(body)?;
        file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_never_overwritten() {
        let dir = DataDir::new(
            std::env::temp_dir().join(format!("pgshift-datadir-{}/nested", uuid::Uuid::new_v4())),
        );
        dir.write_private("k", b"one").unwrap();
        let again = dir.write_private("k", b"two").unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(dir.file("k")).unwrap(), b"one");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(dir.path()), 0o700);
            assert_eq!(mode(&dir.file("k")), 0o600);
        }
        std::fs::remove_dir_all(dir.path().parent().unwrap()).unwrap();
    }
}
